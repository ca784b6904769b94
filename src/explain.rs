//! The `hallpass check` report.
