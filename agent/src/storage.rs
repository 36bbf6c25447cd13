//! Object store construction: the one place that turns a URL into an `ObjectStore` (stub).
