//! Decision → CheckResponse.
