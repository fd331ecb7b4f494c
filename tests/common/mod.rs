//! The workspace's one test harness (`testkit/`).

pub use flashsale_testkit::*;
