//! `pam_imperium.so`: joins a tenant's SSH session to their running container.
//!
//! Not built yet: this crate holds the place the workspace layout gives it. It
//! exports no PAM entry points, so a PAM stack that names it fails to load it
//! (closed), never lands a tenant on the host.
