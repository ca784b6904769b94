//! Server settings.
