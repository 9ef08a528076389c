"""Tests of distances."""

import geo


def test_zero_distance() -> None:
    assert geo.haversine_km((1.0, 2.0), (1.0, 2.0)) == 0.0


def test_paris_london() -> None:
    assert 330 < geo.haversine_km((48.86, 2.35), (51.51, -0.13)) < 350


def test_symmetric() -> None:
    a, b = (10.0, 20.0), (-5.0, 40.0)
    assert geo.haversine_km(a, b) == geo.haversine_km(b, a)


def test_bbox() -> None:
    assert geo.bbox([(1, 2), (3, -4)]) == (1, -4, 3, 2)


def test_bbox_single() -> None:
    assert geo.bbox([(1, 2)]) == (1, 2, 1, 2)


def test_antipodes() -> None:
    assert 20000 < geo.haversine_km((0.0, 0.0), (0.0, 180.0)) < 20040
