//! Points, and where a point's query patch is seen.

use std::ops::{Add, Div, Mul, Sub};

/// A position in pixels of a frame or pyramid level: x = column, y = row, pixel centres at
/// integers. The operators work per axis in f32, so they compute what the written-out
/// arithmetic did, bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Point {
    pub(super) x: f32,
    pub(super) y: f32,
}

impl Point {
    pub(super) const ZERO: Point = Point { x: 0.0, y: 0.0 };

    pub(super) fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }

    /// Length, by `hypot` (no overflow or underflow of the squares).
    pub(super) fn norm(self) -> f32 {
        self.x.hypot(self.y)
    }

    pub(super) fn distance(self, other: Point) -> f32 {
        (self - other).norm()
    }

    pub(super) fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite()
    }
}

impl From<[f32; 2]> for Point {
    fn from([x, y]: [f32; 2]) -> Self {
        Self { x, y }
    }
}

impl From<Point> for [f32; 2] {
    fn from(p: Point) -> Self {
        [p.x, p.y]
    }
}

impl Add for Point {
    type Output = Point;
    fn add(self, o: Point) -> Point {
        Point { x: self.x + o.x, y: self.y + o.y }
    }
}

impl Sub for Point {
    type Output = Point;
    fn sub(self, o: Point) -> Point {
        Point { x: self.x - o.x, y: self.y - o.y }
    }
}

impl Mul<f32> for Point {
    type Output = Point;
    fn mul(self, k: f32) -> Point {
        Point { x: self.x * k, y: self.y * k }
    }
}

impl Div<f32> for Point {
    type Output = Point;
    fn div(self, k: f32) -> Point {
        Point { x: self.x / k, y: self.y / k }
    }
}

/// A 2x2 linear map, row-major: how the query patch is deformed where a point is seen.
pub(super) type Warp = [f32; 4];

pub(super) const IDENTITY: Warp = [1.0, 0.0, 0.0, 1.0];

/// Where a point is and the warp of its query patch there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Pose {
    pub(super) at: Point,
    pub(super) warp: Warp,
}
