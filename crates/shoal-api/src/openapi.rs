//! The OpenAPI 3.1 description of the API, served at `/openapi.json`. Paths
//! are listed here; every body schema is generated from the wire types, so
//! the two cannot drift apart.

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};
use shoal_types::AppSpec;

use crate::wire::{
    AppView, ApplyResponse, CaView, ClusterInfo, ClusterSettings, DnsRecordView, DrainRequest,
    ErrorBody, FileCreate, FileUpdate, FileView, GossipKeys, ImageDiskView, ImagePull, ImageView,
    JoinRequest, JoinResponse, JoinTokenCreate, JoinTokenCreated, JoinTokenView, NodeUpdate,
    NodeView, PlanView, PullView, RegistryAdd, RegistryCredentials, RegistryCredentialsRequest,
    RegistryView, RenewRequest, RenewResponse, TaintRequest, TaskSecrets, TaskSecretsRequest,
    TaskView, TokenCreate, TokenCreated, TokenView, VersionInfo,
};

pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut refs = serde_json::Map::new();
    let mut add = |name: &str, schema: schemars::Schema| {
        refs.insert(name.to_string(), schema.to_value());
    };
    add("VersionInfo", generator.subschema_for::<VersionInfo>());
    add("ClusterInfo", generator.subschema_for::<ClusterInfo>());
    add(
        "ClusterSettings",
        generator.subschema_for::<ClusterSettings>(),
    );
    add("NodeList", generator.subschema_for::<Vec<NodeView>>());
    add("AppList", generator.subschema_for::<Vec<AppView>>());
    add("AppView", generator.subschema_for::<AppView>());
    add("AppSpec", generator.subschema_for::<AppSpec>());
    add("ApplyResponse", generator.subschema_for::<ApplyResponse>());
    add("TaskList", generator.subschema_for::<Vec<TaskView>>());
    add("ImageList", generator.subschema_for::<Vec<ImageView>>());
    add("Image", generator.subschema_for::<ImageView>());
    add("PullList", generator.subschema_for::<Vec<PullView>>());
    add("ImageDisk", generator.subschema_for::<ImageDiskView>());
    add("ImagePull", generator.subschema_for::<ImagePull>());
    add("ErrorBody", generator.subschema_for::<ErrorBody>());
    add("TaintRequest", generator.subschema_for::<TaintRequest>());
    add("DrainRequest", generator.subschema_for::<DrainRequest>());
    add("NodeUpdate", generator.subschema_for::<NodeUpdate>());
    add("PlanView", generator.subschema_for::<PlanView>());
    add("DnsList", generator.subschema_for::<Vec<DnsRecordView>>());
    add("TokenCreate", generator.subschema_for::<TokenCreate>());
    add("TokenCreated", generator.subschema_for::<TokenCreated>());
    add("TokenList", generator.subschema_for::<Vec<TokenView>>());
    add(
        "JoinTokenCreate",
        generator.subschema_for::<JoinTokenCreate>(),
    );
    add(
        "JoinTokenCreated",
        generator.subschema_for::<JoinTokenCreated>(),
    );
    add(
        "JoinTokenList",
        generator.subschema_for::<Vec<JoinTokenView>>(),
    );
    add("JoinRequest", generator.subschema_for::<JoinRequest>());
    add("JoinResponse", generator.subschema_for::<JoinResponse>());
    add("RenewRequest", generator.subschema_for::<RenewRequest>());
    add("RenewResponse", generator.subschema_for::<RenewResponse>());
    add("GossipKeys", generator.subschema_for::<GossipKeys>());
    add(
        "RegistryCredentialsRequest",
        generator.subschema_for::<RegistryCredentialsRequest>(),
    );
    add(
        "RegistryCredentials",
        generator.subschema_for::<RegistryCredentials>(),
    );
    add("CaView", generator.subschema_for::<CaView>());
    add("RegistryAdd", generator.subschema_for::<RegistryAdd>());
    add("RegistryView", generator.subschema_for::<RegistryView>());
    add(
        "RegistryList",
        generator.subschema_for::<Vec<RegistryView>>(),
    );
    add(
        "TaskSecretsRequest",
        generator.subschema_for::<TaskSecretsRequest>(),
    );
    add("TaskSecrets", generator.subschema_for::<TaskSecrets>());
    add("FileCreate", generator.subschema_for::<FileCreate>());
    add("FileUpdate", generator.subschema_for::<FileUpdate>());
    add("FileView", generator.subschema_for::<FileView>());
    add("FileList", generator.subschema_for::<Vec<FileView>>());
    let schemas = generator.take_definitions(true);
    let body = |name: &str| refs[name].clone();
    let ok = |description: &str, name: &str| json!({"description": description, "content": {"application/json": {"schema": body(name)}}});
    let error = json!({"description": "the request failed; `error` says why and what to do",
        "content": {"application/json": {"schema": body("ErrorBody")}}});
    let name_param =
        json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let prepull_param = json!([{"name": "prepull", "in": "query", "required": false,
        "schema": {"type": "boolean", "default": false},
        "description": "also ask the nodes each service's `prepull` names whether they hold its image (the `prepull` of each service; slower)"}]);
    let json_body = |name: &str| json!({"required": true, "content": {"application/json": {"schema": body(name)}}});
    let credentials = json!({
        "/v1/join/ca": {"get": {"summary": "The cluster's CA bundle (PEM), for a joiner to compare with the hash its join token pins", "security": [],
            "responses": {"200": {"description": "PEM", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/join": {"post": {"summary": "Join with a join token (the token in the body is the credential); another node than the leader answers 421 naming it", "security": [],
            "requestBody": json_body("JoinRequest"),
            "responses": {"200": ok("the node's certificate", "JoinResponse"), "default": error.clone()}}},
        "/v1/internal/renew": {"post": {"summary": "A node renews its certificate (node certificates only)",
            "requestBody": json_body("RenewRequest"),
            "responses": {"200": ok("the renewed certificate", "RenewResponse"), "default": error.clone()}}},
        "/v1/internal/gossip-keys": {"get": {"summary": "The gossip keyring the cluster's state holds (node certificates only; answered by a node that holds the data key)",
            "responses": {"200": ok("the keyring", "GossipKeys"), "default": error.clone()}}},
        "/v1/internal/registry-credentials": {"post": {"summary": "A registry's credentials for a node that pulls from it: it runs or holds ahead an image of the registry, or answers an operator's call whose token is sent along (node certificates only; answered by a node that holds the data key)",
            "requestBody": json_body("RegistryCredentialsRequest"),
            "responses": {"200": ok("the credentials", "RegistryCredentials"), "default": error.clone()}}},
        "/v1/internal/task-secrets": {"post": {"summary": "The secrets of a task placed on the asking node and meant to run, as it starts it (node certificates only; answered by a node that holds the data key)",
            "requestBody": json_body("TaskSecretsRequest"),
            "responses": {"200": ok("the values", "TaskSecrets"), "default": error.clone()}}},
        "/v1/internal/blobs/{digest}": {"parameters": [
                {"name": "digest", "in": "path", "required": true, "schema": {"type": "string"}, "description": "sha256:HEX"},
                {"name": "reference", "in": "query", "schema": {"type": "string"}, "description": "the image the blob belongs to, where to fetch it when this node does not hold it"},
                {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "the blob's size in bytes"},
                {"name": "Range", "in": "header", "schema": {"type": "string"}, "description": "bytes=OFFSET- for the rest of a blob"}],
            "get": {"summary": "A blob this node holds, or fetches once from its registry for every node that asks (node certificates only); checked by the asker against its digest",
                "responses": {"200": {"description": "the blob", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "the blob from the offset asked", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "default": error.clone()}}},
        "/v1/cluster/ca": {"get": {"summary": "The cluster's CA: its roots, the signer, and the generation each node has taken (how far a rotation is)",
            "responses": {"200": ok("the CA", "CaView"), "default": error.clone()}}},
        "/v1/cluster/ca/rotate": {"post": {"summary": "Start a rotation onto a new root, cross-signed by the current one (admin; send it to a voter node): nodes trust both roots and renew onto the new one, and it ends by itself once every node has; 409 while one is under way",
            "responses": {"200": ok("the CA, rotating", "CaView"), "default": error.clone()}}},
        "/v1/registries": {
            "get": {"summary": "Registry settings (never their passwords)", "responses": {"200": ok("registries", "RegistryList"), "default": error.clone()}},
            "post": {"summary": "Set how to reach a registry and who to be there; the password is sealed with the cluster's data key (send it to a voter node)", "requestBody": json_body("RegistryAdd"),
                "responses": {"200": ok("the registry", "RegistryView"), "default": error.clone()}}
        },
        "/v1/registries/{host}": {"parameters": [{"name": "host", "in": "path", "required": true, "schema": {"type": "string"}}],
            "delete": {"summary": "Forget a registry's settings", "responses": {"204": {"description": "removed"}, "default": error.clone()}}},
        "/v1/secrets": {
            "get": {"summary": "Secrets: names, versions, sizes and the services that list them (never their values)", "responses": {"200": ok("secrets", "FileList"), "default": error.clone()}},
            "post": {"summary": "Create a secret; its value is sealed with the cluster's data key and never shown again (send it to a voter node)", "requestBody": json_body("FileCreate"),
                "responses": {"200": ok("the secret", "FileView"), "default": error.clone()}}
        },
        "/v1/secrets/{name}": {"parameters": name_param.clone(),
            "put": {"summary": "Give a secret a new value, its next version (send it to a voter node)", "requestBody": json_body("FileUpdate"),
                "responses": {"200": ok("the secret", "FileView"), "default": error.clone()}},
            "delete": {"summary": "Remove a secret no service lists", "responses": {"204": {"description": "removed"}, "default": error.clone()}}},
        "/v1/configs": {
            "get": {"summary": "Configs: names, versions, sizes and the services that list them", "responses": {"200": ok("configs", "FileList"), "default": error.clone()}},
            "post": {"summary": "Create a config", "requestBody": json_body("FileCreate"),
                "responses": {"200": ok("the config", "FileView"), "default": error.clone()}}
        },
        "/v1/configs/{name}": {"parameters": name_param.clone(),
            "put": {"summary": "Give a config a new value, its next version", "requestBody": json_body("FileUpdate"),
                "responses": {"200": ok("the config", "FileView"), "default": error.clone()}},
            "delete": {"summary": "Remove a config no service lists", "responses": {"204": {"description": "removed"}, "default": error.clone()}}},
        "/v1/tokens": {
            "get": {"summary": "API tokens (never their secrets)", "responses": {"200": ok("tokens", "TokenList"), "default": error.clone()}},
            "post": {"summary": "Make an API token; its secret is in this answer only", "requestBody": json_body("TokenCreate"),
                "responses": {"200": ok("the token", "TokenCreated"), "default": error.clone()}}
        },
        "/v1/tokens/{id}": {"parameters": id_param.clone(), "delete": {"summary": "Revoke an API token", "responses": {"204": {"description": "revoked"}, "default": error.clone()}}},
        "/v1/cluster/join-tokens": {
            "get": {"summary": "Join tokens: valid, expired, used or revoked", "responses": {"200": ok("join tokens", "JoinTokenList"), "default": error.clone()}},
            "post": {"summary": "Make a join token (SHOAL-1-…)", "requestBody": json_body("JoinTokenCreate"),
                "responses": {"200": ok("the join token", "JoinTokenCreated"), "default": error.clone()}}
        },
        "/v1/cluster/join-tokens/{id}": {"parameters": id_param, "delete": {"summary": "Revoke a join token", "responses": {"204": {"description": "revoked"}, "default": error.clone()}}},
        "/v1/nodes/{name}": {"parameters": name_param.clone(), "delete": {"summary": "Remove a node for good: every node refuses its certificate from now on", "responses": {"204": {"description": "removed"}, "default": error.clone()}}}
    });
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "shoal",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API every shoal node serves. Any node answers any call."
        },
        "paths": {
            "/v1/health": {"get": {"summary": "Whether the node serves; the one route without a credential", "security": [], "responses": {"200": {"description": "it serves"}}}},
            "/v1/version": {"get": {"summary": "Version and commit of this node", "responses": {"200": ok("version", "VersionInfo")}}},
            "/v1/nodes": {"get": {"summary": "The cluster's nodes", "responses": {"200": ok("nodes", "NodeList"), "default": error}}},
            "/v1/cluster": {"get": {"summary": "The cluster's identity, voters and leader, as a joining node asks", "responses": {"200": ok("cluster", "ClusterInfo"), "default": error}}},
            "/v1/dns": {"get": {"summary": "The records the cluster's DNS serves: SERVICE.APP.ZONE A records of running tasks, SRV records of named ports", "responses": {"200": ok("records", "DnsList"), "default": error}}},
            "/v1/cluster/settings": {"put": {"summary": "Change cluster-wide settings (fields left out keep their value)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": body("ClusterSettings")}}},
                "responses": {"200": ok("cluster", "ClusterInfo"), "default": error}}},
            "/v1/nodes/{name}/taints": {"post": {"summary": "Add a taint to a node (replacing one with the same key and effect); NoExecute moves away the work that does not tolerate it",
                "parameters": name_param.clone(),
                "requestBody": {"required": true, "content": {"application/json": {"schema": body("TaintRequest")}}},
                "responses": {"200": ok("the node", "NodeUpdate"), "default": error}}},
            "/v1/nodes/{name}/taints/{key}": {"delete": {"summary": "Remove a node's taints with this key (only those of `effect` when given)",
                "parameters": [
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "key", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "effect", "in": "query", "required": false, "schema": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}
                ],
                "responses": {"200": ok("the node", "NodeUpdate"), "default": error}}},
            "/v1/nodes/{name}/drain": {"put": {"summary": "Drain a node (no new work, its work moves away) or undo it",
                "parameters": name_param.clone(),
                "requestBody": {"required": true, "content": {"application/json": {"schema": body("DrainRequest")}}},
                "responses": {"200": ok("the node", "NodeUpdate"), "default": error}}},
            "/v1/plan": {"post": {"summary": "What applying an app spec would do, without changing anything",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": body("AppSpec")},
                    "application/yaml": {"schema": body("AppSpec")}
                }},
                "responses": {"200": ok("the plan", "PlanView"), "422": error.clone(), "default": error}}},
            "/v1/node/leave": {"post": {"summary": "The answering node leaves the cluster: its work moves away, then it stops", "responses": {"202": {"description": "leaving"}, "default": error}}},
            "/v1/apps": {
                "get": {"summary": "Every app", "parameters": prepull_param.clone(), "responses": {"200": ok("apps", "AppList"), "default": error}},
                "post": {
                    "summary": "Create or update an app",
                    "description": "The body is an app spec in YAML or JSON (native or Stellar's application config), at most 1 MiB. A spec equal to the current one changes nothing. A rejected spec changes nothing and is answered with 422 and the fields at fault.",
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": body("AppSpec")},
                        "application/yaml": {"schema": body("AppSpec")}
                    }},
                    "responses": {"200": ok("applied", "ApplyResponse"), "422": error.clone(), "default": error}
                }
            },
            "/v1/apps/{name}": {
                "parameters": name_param,
                "get": {"summary": "One app", "parameters": prepull_param, "responses": {"200": ok("the app", "AppView"), "404": error.clone(), "default": error}},
                "delete": {"summary": "Remove an app and stop its tasks", "responses": {"204": {"description": "removed"}, "404": error.clone(), "default": error}}
            },
            "/v1/tasks": {"get": {
                "summary": "Tasks, optionally of one app",
                "parameters": [{"name": "app", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": ok("tasks", "TaskList"), "default": error}
            }},
            "/v1/logs/{target}": {"get": {
                "summary": "stdout and stderr of a task (APP.SERVICE.SLOT.SERIAL) or of every task of a service (APP.SERVICE)",
                "parameters": [
                    {"name": "target", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "follow", "in": "query", "required": false, "schema": {"type": "boolean"}},
                    {"name": "tail", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "local", "in": "query", "required": false, "schema": {"type": "boolean"}, "description": "only tasks of the answering node"}
                ],
                "responses": {"200": {"description": "log text", "content": {"text/plain": {"schema": {"type": "string"}}}}, "404": error.clone(), "default": error}
            }},
            "/v1/images/disk": {
                "get": {"summary": "The disk this node's images are on, and the marks of its image garbage collector", "responses": {"200": ok("the disk", "ImageDisk"), "default": error.clone()}}
            },
            "/v1/images/pulls": {
                "get": {"summary": "Pulls under way on this node, with how far each is", "responses": {"200": ok("pulls", "PullList"), "default": error.clone()}}
            },
            "/v1/images": {
                "get": {"summary": "Images on this node", "responses": {"200": ok("images", "ImageList"), "default": error}},
                "post": {
                    "summary": "Import an OCI image layout or `docker save` tarball into this node",
                    "parameters": [{"name": "name", "in": "query", "required": false, "schema": {"type": "string"}, "description": "name for an archive that carries none, or to rename"}],
                    "requestBody": {"required": true, "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
                    "responses": {"200": ok("imported images", "ImageList"), "default": error}
                },
                "delete": {
                    "summary": "Remove an image from this node; refused (409) while a task of the node runs it or is meant to",
                    "parameters": [{"name": "name", "in": "query", "required": true, "schema": {"type": "string"}, "description": "the image's name as `GET /v1/images` lists it"}],
                    "responses": {"204": {"description": "removed"}, "default": error}
                }
            },
            "/v1/images/pull": {"post": {
                "summary": "Pull an image from its registry onto this node (plain HTTP only for loopback registries)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": body("ImagePull")}}},
                "responses": {"200": ok("the pulled image", "Image"), "400": error.clone(), "404": error.clone(), "503": error.clone(), "default": error}
            }},
            "/v1/schema/app.json": {"get": {"summary": "JSON Schema of the app spec", "responses": {"200": {"description": "schema"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`shoal_…`) of role admin, deployer or reader; `shoal token create` makes one"}
            }
        }
    });
    if let (Some(paths), Value::Object(more)) = (document["paths"].as_object_mut(), credentials) {
        paths.extend(more);
    }
    document
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let document = super::document();
        let text = document.to_string();
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("components.schemas");
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("reference {target} outside components"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
        assert!(document["paths"]["/v1/apps"]["post"]["requestBody"].is_object());
    }
}
