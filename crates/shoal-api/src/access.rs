//! Who may call what: every route of every shoal node, the public API and
//! the node-to-node routes alike, needs one of these. The node's gate
//! checks the caller's credential against it before any handler runs; a
//! path not named here needs `Admin` (and then answers 404).

use axum::http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No credential: only the data-free health check.
    Public,
    /// The join routes: the join token in the body is the credential
    /// (and `GET /v1/join/ca` hands out only the CA certificate).
    Join,
    /// Reading: a `reader`, `deployer` or `admin` token, or any node.
    Read,
    /// Apps and images: a `deployer` or `admin` token.
    Deploy,
    /// Everything else an operator does: an `admin` token.
    Admin,
    /// Node to node: a certificate of a node the cluster admitted and did
    /// not remove.
    Node,
    /// Raft's own RPCs: a node admitted as one that may vote.
    Voter,
}

/// Raft RPCs only voter-capable nodes send, and the membership changes
/// only the leader makes (forwarded by a voter that just lost the lead).
const VOTER_ROUTES: [&str; 6] = [
    "/v1/raft/append",
    "/v1/raft/vote",
    "/v1/raft/snapshot",
    "/v1/raft/add-learner",
    "/v1/raft/change-voters",
    "/v1/raft/remove-nodes",
];

/// What calling `method path` needs.
pub fn required(method: &Method, path: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        "/v1/health" if read => Access::Public,
        "/v1/join/ca" if read => Access::Join,
        "/v1/join" if method == Method::POST => Access::Join,
        path if VOTER_ROUTES.contains(&path) => Access::Voter,
        path if path.starts_with("/v1/raft/") || path.starts_with("/v1/internal/") => Access::Node,
        // Tokens and join tokens are credentials: listing them is an
        // operator's business too.
        path if path.starts_with("/v1/tokens") || path.starts_with("/v1/cluster/join-tokens") => {
            Access::Admin
        }
        _ if read => Access::Read,
        "/v1/apps" | "/v1/plan" | "/v1/images" | "/v1/images/pull" if method == Method::POST => {
            Access::Deploy
        }
        path if path.starts_with("/v1/apps/") && method == Method::DELETE => Access::Deploy,
        // Secrets and configs go with the apps that use them; a secret's
        // value is never read back through the API.
        "/v1/secrets" | "/v1/configs" if method == Method::POST => Access::Deploy,
        path if (path.starts_with("/v1/secrets/") || path.starts_with("/v1/configs/"))
            && (method == Method::PUT || method == Method::DELETE) =>
        {
            Access::Deploy
        }
        "/v1/images" if method == Method::DELETE => Access::Deploy,
        _ => Access::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_they_should() {
        for (method, path, access) in [
            (Method::GET, "/v1/health", Access::Public),
            (Method::POST, "/v1/health", Access::Admin),
            (Method::GET, "/v1/join/ca", Access::Join),
            (Method::POST, "/v1/join", Access::Join),
            (Method::GET, "/v1/join", Access::Read),
            (Method::POST, "/v1/raft/append", Access::Voter),
            (Method::POST, "/v1/raft/vote", Access::Voter),
            (Method::POST, "/v1/raft/snapshot", Access::Voter),
            (Method::POST, "/v1/raft/propose", Access::Node),
            (Method::POST, "/v1/raft/read-index", Access::Node),
            (Method::POST, "/v1/raft/add-learner", Access::Voter),
            (Method::POST, "/v1/raft/change-voters", Access::Voter),
            (Method::POST, "/v1/raft/remove-nodes", Access::Voter),
            (Method::POST, "/v1/internal/renew", Access::Node),
            (Method::GET, "/v1/internal/gossip-keys", Access::Node),
            (
                Method::POST,
                "/v1/internal/registry-credentials",
                Access::Node,
            ),
            (Method::GET, "/v1/internal/blobs/sha256:ab", Access::Node),
            (Method::GET, "/v1/tokens", Access::Admin),
            (Method::GET, "/v1/cluster/join-tokens", Access::Admin),
            (Method::GET, "/v1/apps", Access::Read),
            (Method::GET, "/openapi.json", Access::Read),
            (Method::POST, "/v1/apps", Access::Deploy),
            (Method::POST, "/v1/plan", Access::Deploy),
            (Method::POST, "/v1/images", Access::Deploy),
            (Method::POST, "/v1/images/pull", Access::Deploy),
            (Method::DELETE, "/v1/images", Access::Deploy),
            (Method::GET, "/v1/registries", Access::Read),
            (Method::POST, "/v1/registries", Access::Admin),
            (Method::DELETE, "/v1/registries/r.example", Access::Admin),
            (Method::GET, "/v1/images/pull", Access::Read),
            (Method::DELETE, "/v1/apps/web", Access::Deploy),
            (Method::GET, "/v1/secrets", Access::Read),
            (Method::POST, "/v1/secrets", Access::Deploy),
            (Method::PUT, "/v1/secrets/db", Access::Deploy),
            (Method::DELETE, "/v1/secrets/db", Access::Deploy),
            (Method::POST, "/v1/secrets/db", Access::Admin),
            (Method::GET, "/v1/configs", Access::Read),
            (Method::POST, "/v1/configs", Access::Deploy),
            (Method::PUT, "/v1/configs/app.toml", Access::Deploy),
            (Method::DELETE, "/v1/configs/app.toml", Access::Deploy),
            (Method::PUT, "/v1/cluster/settings", Access::Admin),
            (Method::POST, "/v1/node/leave", Access::Admin),
            (Method::DELETE, "/v1/nodes/n2", Access::Admin),
            (Method::POST, "/v1/unknown", Access::Admin),
        ] {
            assert_eq!(required(&method, path), access, "{method} {path}");
        }
    }
}
