//! The ext_authz service.
