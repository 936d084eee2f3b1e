//! The HTTP API: the only crate that knows the wire format.
//!
//! [`access`] says which credential each route needs.
//! [`wire`] holds the request and response bodies, [`server`] the routes over
//! a [`server::Backend`] that the node implements, [`openapi`] the OpenAPI
//! description served at `/openapi.json`, and [`client`] the typed client
//! the CLI uses.

pub mod access;
pub mod client;
pub mod openapi;
pub mod server;
pub mod wire;

/// Port of the API and node-to-node RPC.
pub const DEFAULT_API_PORT: u16 = 7950;
