//! Admin HTTP: `/metrics`, `/healthz`, `/readyz` (filled in below).
