//! The HTTP edge between shoal processes, TLS only: an [`Endpoint`] names
//! where a node's server listens and builds every URL to it, [`client`]
//! builds every HTTP client and [`serve`] runs every server. No other code
//! writes a URL scheme, configures a client or accepts a connection, so
//! transport security has one place to live; what is trusted is decided
//! by the rustls configs passed in (`shoal_pki::tls`).

mod client;
mod endpoint;
mod server;

pub use client::{client, client_with_token, probe_client, ClientOptions};
pub use endpoint::{Endpoint, EndpointError, AUTHORITY_BYTES_MAX};
pub use server::{serve, NodeSources, Peer, ServeOptions};
