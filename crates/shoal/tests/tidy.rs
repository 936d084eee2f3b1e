//! The house rules, checked by `cargo test`: the layout ARCHITECTURE.md
//! describes, and the limits STYLE.md asks for, so that they cannot drift.
//! Each rule is a function over text, shown to fail on a planted violation
//! first, then run over the workspace. A failure names the file and the fix.
//!
//! - A pure crate (ARCHITECTURE.md's code map says `none` for its I/O)
//!   depends on no async runtime, HTTP, TLS or randomness crate, and its
//!   `clippy.toml` bans the clock, the file system, sockets, processes and
//!   OS-seeded hashing.
//! - A source file holds at most [`FILE_LINES_MAX`] lines outside test
//!   code, a function at most [`FN_LINES_MAX`] lines, unless
//!   `tidy-allow.txt` names it with a reason; an entry that no longer breaks
//!   the rule fails too, so the list only shrinks.
//! - Every path the code map names exists, and every module of a crate is
//!   named in its row.
//! - A bound named `*_MAX` says its unit: in its name, its type or its doc.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// Lines of a function (from `fn` to its closing brace) beyond which it
/// needs an entry in `tidy-allow.txt`.
const FN_LINES_MAX: usize = 120;
/// Lines of a source file outside `#[cfg(test)]` code beyond which it
/// needs an entry in `tidy-allow.txt`.
const FILE_LINES_MAX: usize = 600;
/// Entries of `tidy-allow.txt`: the list may only shrink, so one added
/// fails until this number is raised too, in review.
const ALLOW_ENTRIES: usize = 8;
/// The crates that are pure whatever the code map says.
const PURE_AT_LEAST: &[&str] = &["shoal-types", "shoal-state", "shoal-sched", "shoal-agent"];

/// Crates that bring an async runtime, HTTP, TLS or OS randomness: none of
/// them may be in a pure crate's dependencies, direct or not.
const IMPURE_CRATES: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "async-io",
    "async-executor",
    "hyper",
    "hyper-util",
    "h2",
    "reqwest",
    "axum",
    "tonic",
    "ureq",
    "rustls",
    "tokio-rustls",
    "native-tls",
    "openssl",
    "ring",
    "aws-lc-rs",
    "rand",
    "getrandom",
    "fastrand",
];

/// The methods every pure crate's `clippy.toml` bans (`disallowed-methods`):
/// the clock, the file system (also through `Path`), name lookups,
/// processes, the environment, and the OS-seeded hashers. (A std `HashMap`
/// made with `default()` is not caught; the pure crates use `FastMap`.)
const REQUIRED_METHOD_BANS: &[&str] = &[
    "std::time::Instant::now",
    "std::time::SystemTime::now",
    "std::time::Instant::elapsed",
    "std::time::SystemTime::elapsed",
    "std::fs::read",
    "std::fs::read_to_string",
    "std::fs::write",
    "std::fs::read_dir",
    "std::fs::create_dir",
    "std::fs::create_dir_all",
    "std::fs::remove_file",
    "std::fs::remove_dir",
    "std::fs::remove_dir_all",
    "std::fs::rename",
    "std::fs::copy",
    "std::fs::metadata",
    "std::fs::symlink_metadata",
    "std::fs::canonicalize",
    "std::fs::hard_link",
    "std::fs::read_link",
    "std::fs::set_permissions",
    "std::fs::soft_link",
    "std::os::unix::fs::symlink",
    "std::os::unix::fs::chown",
    "std::os::unix::fs::lchown",
    "std::os::unix::fs::chroot",
    "std::fs::exists",
    "std::path::Path::exists",
    "std::path::Path::try_exists",
    "std::path::Path::is_file",
    "std::path::Path::is_dir",
    "std::path::Path::metadata",
    "std::path::Path::symlink_metadata",
    "std::path::Path::read_dir",
    "std::path::Path::canonicalize",
    "std::path::Path::read_link",
    "std::path::Path::is_symlink",
    "std::net::ToSocketAddrs::to_socket_addrs",
    "std::process::exit",
    "std::process::abort",
    "std::process::id",
    "std::env::var",
    "std::env::var_os",
    "std::env::vars",
    "std::env::vars_os",
    "std::env::args",
    "std::env::args_os",
    "std::env::current_dir",
    "std::env::set_current_dir",
    "std::env::set_var",
    "std::env::remove_var",
    "std::env::temp_dir",
    "std::env::home_dir",
    "std::hash::RandomState::new",
    "std::collections::HashMap::new",
    "std::collections::HashMap::with_capacity",
    "std::collections::HashSet::new",
    "std::collections::HashSet::with_capacity",
];

/// The types every pure crate's `clippy.toml` bans (`disallowed-types`):
/// files, sockets and processes.
const REQUIRED_TYPE_BANS: &[&str] = &[
    "std::fs::File",
    "std::fs::OpenOptions",
    "std::fs::DirBuilder",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "std::os::unix::net::UnixStream",
    "std::os::unix::net::UnixListener",
    "std::os::unix::net::UnixDatagram",
    "std::process::Command",
    "std::process::Child",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------
// The code map.

/// One row of ARCHITECTURE.md's code map: the crate's job and its I/O.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    job: String,
    io: String,
}

/// The code map's rows by crate name.
fn code_map(architecture: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    let Some(start) = architecture.find("## Code map") else {
        return rows;
    };
    for line in architecture[start..].lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if !line.starts_with("| `") || cells.len() < 3 {
            continue;
        }
        let name = cells[0].trim_start_matches("| ").trim_matches('`');
        let io = cells[cells.len() - 1].trim_end_matches(" |").trim();
        let job = cells[1..cells.len() - 1].join(" | ");
        rows.insert(
            name.to_string(),
            Row {
                job,
                io: io.to_string(),
            },
        );
    }
    rows
}

/// The text between backticks in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// What the code map says of the crates under `crates` (their names and
/// the files of each, relative to the crate): what is wrong.
fn code_map_violations(
    map: &BTreeMap<String, Row>,
    crates: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut wrong: Vec<String> = map
        .keys()
        .filter(|name| !crates.contains_key(*name))
        .map(|name| {
            format!("ARCHITECTURE.md: the code map has a row for `{name}`, which is no crate: remove it")
        })
        .collect();
    for (name, files) in crates {
        let Some(row) = map.get(name) else {
            wrong.push(format!(
                "ARCHITECTURE.md: the code map has no row for crate `{name}`: add one (its job, its I/O)"
            ));
            continue;
        };
        let named = backticked(&row.job);
        // Every path-like name is a file or directory of the crate, or of
        // the crate it names (`crates/NAME/…`).
        for token in &named {
            // Source paths: `x.rs`, `a/b`, `a/`; not a host's (`/run/…`)
            // nor a data file's (`pki/facts.key`).
            let last = token.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            let path_like = token.ends_with(".rs")
                || (token.contains('/') && !token.starts_with('/') && !last.contains('.'));
            let plain = token
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_/.-".contains(c));
            if !path_like || !plain {
                continue;
            }
            if let Some(rest) = token.strip_prefix("crates/") {
                let (other, path) = rest.split_once('/').unwrap_or((rest, ""));
                if !crates
                    .get(other)
                    .is_some_and(|files| path.is_empty() || files.contains(path))
                {
                    wrong.push(format!(
                        "ARCHITECTURE.md: the code map's row for `{name}` names `{token}`, which is not there: name what is there"
                    ));
                }
                continue;
            }
            // `a/b` is a module: `a/b.rs`, `a/b/mod.rs` or the directory.
            let token = token.trim_end_matches("/*");
            let bare = token.trim_end_matches('/');
            let forms = if token.ends_with(".rs") {
                vec![token.to_string()]
            } else {
                vec![
                    format!("{bare}.rs"),
                    format!("{bare}/mod.rs"),
                    format!("{bare}/"),
                ]
            };
            let exists = files.iter().any(|file| {
                forms
                    .iter()
                    .any(|form| file == form || file.ends_with(&format!("/{form}")))
            });
            if !exists {
                wrong.push(format!(
                    "ARCHITECTURE.md: the code map's row for `{name}` names `{token}`, which the crate does not have: name what is there"
                ));
            }
        }
        // A bare name (`keeper`) is a module of the crate: a file or a
        // directory of that name. Anything else is written so that it is
        // not one: a field `Type::field`, a function `f()`, a spec key
        // `key:`, a program `ip(8)`.
        let modules: BTreeSet<&str> = files
            .iter()
            .flat_map(|file| file.split('/'))
            .map(|part| part.trim_end_matches(".rs"))
            .collect();
        for token in &named {
            let bare = token.starts_with(|c: char| c.is_ascii_lowercase())
                && token
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if bare && !modules.contains(token) {
                wrong.push(format!(
                    "ARCHITECTURE.md: the code map's row for `{name}` names `{token}`, which is no module of the crate: name what is there, or write a field as `Type::field`, a function as `f()`, a spec key as `key:`"
                ));
            }
        }
        // Every module of the crate is named in its row.
        let words: BTreeSet<&str> = named
            .iter()
            .flat_map(|token| token.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|word| !word.is_empty())
            .collect();
        // `dir/*` names every module directly in `dir`.
        let globs: Vec<String> = named
            .iter()
            .filter_map(|token| token.strip_suffix("/*"))
            .map(|dir| format!("/{dir}/"))
            .collect();
        for file in files {
            let Some(module) = module_of(file) else {
                continue;
            };
            let in_glob = globs.iter().any(|dir| {
                let file = format!("/{file}");
                file.find(dir.as_str())
                    .is_some_and(|at| !file[at + dir.len()..].contains('/'))
            });
            if !words.contains(module.as_str()) && !in_glob {
                wrong.push(format!(
                    "ARCHITECTURE.md: the code map's row for `{name}` does not name its module `{module}` ({name}/{file}): say in a few words what it does"
                ));
            }
        }
    }
    wrong
}

/// The module a source file (relative to its crate) is, if it is one the
/// code map must name: not a crate root, a binary, or test code.
fn module_of(file: &str) -> Option<String> {
    let inside = file.strip_prefix("src/")?;
    if !inside.ends_with(".rs") || inside.starts_with("bin/") {
        return None;
    }
    let mut parts: Vec<&str> = inside.trim_end_matches(".rs").split('/').collect();
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    let module = parts.last()?.to_string();
    (!["lib", "main", "tests"].contains(&module.as_str()) && !module.ends_with("_tests"))
        .then_some(module)
}

// ---------------------------------------------------------------------
// Pure crates.

/// The crates a pure crate must not depend on, found among its normal
/// dependencies (direct and indirect).
fn impure_dependencies(name: &str, dependencies: &BTreeSet<String>) -> Vec<String> {
    dependencies
        .iter()
        .filter(|dependency| IMPURE_CRATES.contains(&dependency.as_str()))
        .map(|dependency| {
            format!(
                "crates/{name}: a pure crate (ARCHITECTURE.md: I/O none) depends on `{dependency}`: take what it gives as a parameter, or change the code map if the crate is no longer pure"
            )
        })
        .collect()
}

/// The lines of `table = [ … ]` in `clippy_toml` that are not comments.
fn table<'a>(clippy_toml: &'a str, table: &str) -> Vec<&'a str> {
    let mut lines = clippy_toml
        .lines()
        .skip_while(|line| !line.trim_start().starts_with(table));
    let mut inside = Vec::new();
    if lines.next().is_none() {
        return inside;
    }
    for line in lines {
        let line = line.trim();
        if line.starts_with(']') {
            break;
        }
        if !line.starts_with('#') {
            inside.push(line);
        }
    }
    inside
}

/// The bans that `clippy_toml` lacks: each in its own table, not commented
/// out.
fn missing_bans(name: &str, clippy_toml: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for (kind, required) in [
        ("disallowed-methods", REQUIRED_METHOD_BANS),
        ("disallowed-types", REQUIRED_TYPE_BANS),
    ] {
        let lines = table(clippy_toml, kind);
        for path in required {
            let entry = format!("path = \"{path}\"");
            if !lines.iter().any(|line| line.contains(&entry)) {
                wrong.push(format!(
                    "crates/{name}/clippy.toml: a pure crate does not ban `{path}`: add it to {kind}"
                ));
            }
        }
    }
    wrong
}

/// Every package's normal dependencies, direct and indirect, by name,
/// from `cargo metadata`.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        // Not `--offline`: on a fresh machine the build fetched only what
        // this platform needs, and metadata reads every package of the lock.
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata");
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .filter_map(|node| {
            let deps = node["deps"]
                .as_array()?
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|kind| kind["kind"].is_null()))
                })
                .filter_map(|dep| dep["pkg"].as_str())
                .collect();
            Some((node["id"].as_str()?, deps))
        })
        .collect();
    let mut closures = BTreeMap::new();
    for (id, name) in &names {
        let mut seen = BTreeSet::new();
        let mut stack = vec![*id];
        while let Some(at) = stack.pop() {
            for dep in nodes.get(at).into_iter().flatten() {
                if seen.insert(*dep) {
                    stack.push(dep);
                }
            }
        }
        closures.insert(
            name.to_string(),
            seen.iter()
                .filter_map(|id| names.get(id))
                .map(|n| n.to_string())
                .collect(),
        );
    }
    closures
}

// ---------------------------------------------------------------------
// Lengths and bounds, from the source parsed by syn.

/// What one source file holds, as the rules look at it.
#[derive(Debug, Default)]
struct Measured {
    /// Lines outside `#[cfg(test)]` items.
    lines: usize,
    /// Every function (`name`, its lines), test code left out.
    functions: Vec<(String, usize)>,
    /// Modules declared `#[cfg(test)] mod NAME;`: files of test code.
    test_modules: Vec<String>,
    /// Constants named `*_MAX` that say no unit (in name, type or doc).
    unitless_bounds: Vec<String>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr.meta.require_list().is_ok_and(|list| {
                list.tokens
                    .clone()
                    .into_iter()
                    .any(|token| token.to_string() == "test")
            })
    })
}

/// The attributes of an item, of any kind that carries some.
fn attrs_of(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        _ => &[],
    }
}

fn is_doc(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| attr.path().is_ident("doc"))
}

/// Unit words a bound's name may carry before `_MAX`.
const UNITS: &[&str] = &[
    "BYTES", "CHARS", "LINES", "MS", "SECS", "SECONDS", "MILLIS", "BITS", "ENTRIES", "ITEMS",
];

struct Walk {
    measured: Measured,
}

impl Walk {
    fn bound(&mut self, name: &syn::Ident, ty: &syn::Type, attrs: &[syn::Attribute]) {
        let name = name.to_string();
        if !name.ends_with("_MAX") {
            return;
        }
        let in_name = name.split('_').any(|word| UNITS.contains(&word));
        let in_type = quote::ToTokens::to_token_stream(ty)
            .to_string()
            .contains("Duration");
        if !(in_name || in_type || is_doc(attrs)) {
            self.measured.unitless_bounds.push(name);
        }
    }

    fn function(&mut self, name: &syn::Ident, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.fn_token.span.start().line;
        let end = block.brace_token.span.close().end().line;
        self.measured
            .functions
            .push((name.to_string(), end.saturating_sub(start) + 1));
    }
}

impl<'ast> Visit<'ast> for Walk {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = attrs_of(item);
        if is_test(attrs) {
            if let syn::Item::Mod(module) = item {
                if module.content.is_none() {
                    self.measured.test_modules.push(module.ident.to_string());
                }
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.function(&item.sig.ident, &item.sig, &item.block);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if is_test(&item.attrs) {
            return;
        }
        self.function(&item.sig.ident, &item.sig, &item.block);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.function(&item.sig.ident, &item.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }

    fn visit_item_const(&mut self, item: &'ast syn::ItemConst) {
        self.bound(&item.ident, &item.ty, &item.attrs);
        syn::visit::visit_item_const(self, item);
    }

    fn visit_item_static(&mut self, item: &'ast syn::ItemStatic) {
        self.bound(&item.ident, &item.ty, &item.attrs);
        syn::visit::visit_item_static(self, item);
    }

    fn visit_impl_item_const(&mut self, item: &'ast syn::ImplItemConst) {
        self.bound(&item.ident, &item.ty, &item.attrs);
        syn::visit::visit_impl_item_const(self, item);
    }
}

/// Lines of `#[cfg(test)]` items at any depth, from their first attribute
/// to their end.
fn test_lines(items: &[syn::Item]) -> usize {
    let mut lines = 0;
    for item in items {
        let attrs = attrs_of(item);
        if is_test(attrs) {
            let start = attrs.first().map_or(item.span().start().line, |attr| {
                attr.pound_token.span.start().line
            });
            lines += item.span().end().line + 1 - start;
        } else if let syn::Item::Mod(syn::ItemMod {
            content: Some((_, inner)),
            ..
        }) = item
        {
            lines += test_lines(inner);
        }
    }
    lines
}

fn measure(source: &str) -> Result<Measured, String> {
    let file = syn::parse_file(source).map_err(|e| e.to_string())?;
    let mut walk = Walk {
        measured: Measured::default(),
    };
    walk.visit_file(&file);
    walk.measured.lines = source.lines().count() - test_lines(&file.items);
    Ok(walk.measured)
}

// ---------------------------------------------------------------------
// The allow-list.

/// `tidy-allow.txt`: `file PATH -- reason` and `fn PATH::NAME -- reason`.
fn allow_list(text: &str) -> Result<BTreeSet<(String, String)>, String> {
    let mut entries = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((what, reason)) = line.split_once(" -- ") else {
            return Err(format!(
                "tidy-allow.txt:{}: `{line}`: write `file PATH -- reason` or `fn PATH::NAME -- reason`",
                number + 1
            ));
        };
        let Some((kind, target)) = what.split_once(' ') else {
            return Err(format!("tidy-allow.txt:{}: `{line}`: no kind", number + 1));
        };
        if !["file", "fn"].contains(&kind) || reason.trim().len() < 10 {
            return Err(format!(
                "tidy-allow.txt:{}: `{line}`: the kind is `file` or `fn`, and the reason says why in a few words",
                number + 1
            ));
        }
        entries.insert((kind.to_string(), target.trim().to_string()));
    }
    Ok(entries)
}

/// The allow-list's length against the number pinned: more breaks the rule
/// that it only shrinks, fewer must be pinned so it cannot grow back.
fn allow_count_violation(entries: usize, pinned: usize) -> Option<String> {
    match entries.cmp(&pinned) {
        std::cmp::Ordering::Greater => Some(format!(
            "tidy-allow.txt: {entries} entries, more than the {pinned} it had: the list only shrinks; split the file or function instead"
        )),
        std::cmp::Ordering::Less => Some(format!(
            "tidy-allow.txt: {entries} entries: lower ALLOW_ENTRIES in crates/shoal/tests/tidy.rs to {entries}, so that the list cannot grow back"
        )),
        std::cmp::Ordering::Equal => None,
    }
}

/// Lengths over the limits that the allow-list does not name, and entries
/// of the list that break no rule any more.
fn length_violations(
    measured: &BTreeMap<String, Measured>,
    allowed: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut over = BTreeSet::new();
    for (path, measured) in measured {
        if measured.lines > FILE_LINES_MAX {
            over.insert(("file".to_string(), path.clone()));
            if !allowed.contains(&("file".to_string(), path.clone())) {
                wrong.push(format!(
                    "{path}: {} lines outside tests, more than {FILE_LINES_MAX}: split it into modules by what each part does",
                    measured.lines
                ));
            }
        }
        for (name, lines) in &measured.functions {
            if *lines <= FN_LINES_MAX {
                continue;
            }
            let target = format!("{path}::{name}");
            over.insert(("fn".to_string(), target.clone()));
            if !allowed.contains(&("fn".to_string(), target.clone())) {
                wrong.push(format!(
                    "{target}: {lines} lines, more than {FN_LINES_MAX}: take its decisions out into functions of their own"
                ));
            }
        }
    }
    for entry in allowed.difference(&over) {
        wrong.push(format!(
            "tidy-allow.txt: `{} {}` breaks no rule (any more): remove the entry",
            entry.0, entry.1
        ));
    }
    wrong
}

// ---------------------------------------------------------------------
// The workspace.

/// Every crate under `crates/` with its files (relative to the crate),
/// target directories left out.
fn workspace_crates() -> BTreeMap<String, BTreeSet<String>> {
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates") {
        let dir = entry.expect("entry").path();
        if !dir.join("Cargo.toml").exists() {
            continue;
        }
        let name = dir.file_name().expect("name").to_string_lossy().to_string();
        let mut files = BTreeSet::new();
        let mut stack = vec![dir.clone()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).expect("read dir") {
                let path = entry.expect("entry").path();
                let relative = path
                    .strip_prefix(&dir)
                    .expect("inside")
                    .to_string_lossy()
                    .to_string();
                if path.is_dir() {
                    if relative != "target" {
                        files.insert(format!("{relative}/"));
                        stack.push(path);
                    }
                } else {
                    files.insert(relative);
                }
            }
        }
        crates.insert(name, files);
    }
    crates
}

/// Every non-test source file of the workspace (relative to the root),
/// measured.
fn measure_workspace(crates: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, Measured> {
    let mut measured = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for (name, files) in crates {
        for file in files
            .iter()
            .filter(|f| f.starts_with("src/") && f.ends_with(".rs"))
        {
            let path = format!("crates/{name}/{file}");
            let result = measure(&read(&root().join(&path)))
                .unwrap_or_else(|error| panic!("{path} does not parse: {error}"));
            // `#[cfg(test)] mod x;` in `a/b.rs` is `a/b/x.rs`; in `a/mod.rs`,
            // `lib.rs` or `main.rs` it is `a/x.rs` (or `.../x/mod.rs`).
            let base = match file.rsplit_once('/') {
                Some((dir, "mod.rs" | "lib.rs" | "main.rs")) => dir.to_string(),
                _ => file.trim_end_matches(".rs").to_string(),
            };
            for module in &result.test_modules {
                test_files.insert(format!("crates/{name}/{base}/{module}.rs"));
                test_files.insert(format!("crates/{name}/{base}/{module}/mod.rs"));
            }
            measured.insert(path, result);
        }
    }
    measured.retain(|path, _| !test_files.contains(path));
    measured
}

// ---------------------------------------------------------------------
// Each rule fails on a planted violation.

const MAP: &str = "# x\n\n## Code map\n\n| crate | job | I/O |\n|---|---|---|\n| `pure` | `a` (`sub/b.rs`), `c/`, `g/*` | none |\n| `edge` | `d`, `e.rs`, driven by `crates/pure/src/c/`, kept in `/run/x` and `pki/a.key` | HTTP |\n\n## Next\n| `late` | x | none |\n";

#[test]
fn a_planted_code_map_violation_fails() {
    let mut map = code_map(MAP);
    assert_eq!(map.len(), 2, "{map:?}");
    assert_eq!(map["pure"].io, "none");
    assert_eq!(map["edge"].io, "HTTP");
    let files = |list: &[&str]| list.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>();
    let mut crates = BTreeMap::from([
        (
            "pure".to_string(),
            files(&[
                "src/lib.rs",
                "src/a.rs",
                "src/sub/",
                "src/sub/b.rs",
                "src/c/",
                "src/c/mod.rs",
                "src/g/",
                "src/g/one.rs",
            ]),
        ),
        (
            "edge".to_string(),
            files(&["src/lib.rs", "src/d.rs", "src/e.rs", "src/bin/x.rs"]),
        ),
    ]);
    assert_eq!(code_map_violations(&map, &crates), Vec::<String>::new());
    // A module the row does not name (also one below a `dir/*`), a path
    // that is not there (also one named in another crate's row), a crate
    // without a row, a row without a crate.
    let pure = crates.get_mut("pure").expect("pure");
    pure.insert("src/f.rs".into());
    pure.insert("src/g/deep/".into());
    pure.insert("src/g/deep/two.rs".into());
    pure.remove("src/c/");
    pure.remove("src/c/mod.rs");
    crates.get_mut("edge").expect("edge").remove("src/e.rs");
    crates.insert("new".into(), files(&["src/lib.rs"]));
    // A bare name that is no module (one that went).
    map.get_mut("edge")
        .expect("edge")
        .job
        .push_str(", `h` the module that went");
    map.insert(
        "gone".into(),
        Row {
            job: "`x`".into(),
            io: "none".into(),
        },
    );
    let wrong = code_map_violations(&map, &crates);
    assert_eq!(wrong.len(), 8, "{wrong:#?}");
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("names `h`, which is no module")),
        "{wrong:#?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("does not name its module `two`")),
        "{wrong:#?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("a row for `gone`, which is no crate")),
        "{wrong:#?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("names `crates/pure/src/c/`")),
        "{wrong:#?}"
    );
    assert!(wrong.iter().any(|w| w.contains("names `c/`")), "{wrong:#?}");
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("does not name its module `f`")),
        "{wrong:#?}"
    );
    assert!(
        wrong.iter().any(|w| w.contains("names `e.rs`")),
        "{wrong:#?}"
    );
    assert!(
        wrong.iter().any(|w| w.contains("no row for crate `new`")),
        "{wrong:#?}"
    );
    assert_eq!(module_of("src/node/gate_tests.rs"), None);
    assert_eq!(module_of("src/node/mod.rs").as_deref(), Some("node"));
    assert_eq!(module_of("tests/cases.rs"), None);
}

#[test]
fn a_planted_impure_dependency_or_missing_ban_fails() {
    let deps: BTreeSet<String> = ["serde", "tokio", "rand"].map(String::from).into();
    let wrong = impure_dependencies("shoal-x", &deps);
    assert_eq!(wrong.len(), 2, "{wrong:#?}");
    assert!(wrong[0].contains("depends on `rand`"), "{wrong:#?}");
    let entries = |paths: &[&str]| -> String {
        paths
            .iter()
            .map(|path| format!("    {{ path = \"{path}\", reason = \"pure\" }},\n"))
            .collect()
    };
    let all = format!(
        "# pure\ndisallowed-methods = [\n{}]\ndisallowed-types = [\n{}]\n",
        entries(REQUIRED_METHOD_BANS),
        entries(REQUIRED_TYPE_BANS)
    );
    assert_eq!(missing_bans("shoal-x", &all), Vec::<String>::new());
    // Gone, commented out, or in the wrong table.
    let gone = all.replace("\"std::fs::read_dir\"", "\"std::fs::other\"");
    let commented = all.replace(
        "    { path = \"std::process::exit\"",
        "#    { path = \"std::process::exit\"",
    );
    let moved = all
        .replace("    { path = \"std::net::TcpListener\", reason = \"pure\" },\n", "")
        .replace(
            "disallowed-methods = [\n",
            "disallowed-methods = [\n    { path = \"std::net::TcpListener\", reason = \"pure\" },\n",
        );
    for (text, path, kind) in [
        (&gone, "std::fs::read_dir", "disallowed-methods"),
        (&commented, "std::process::exit", "disallowed-methods"),
        (&moved, "std::net::TcpListener", "disallowed-types"),
    ] {
        assert_eq!(
            missing_bans("shoal-x", text),
            vec![format!(
                "crates/shoal-x/clippy.toml: a pure crate does not ban `{path}`: add it to {kind}"
            )]
        );
    }
}

#[test]
fn a_planted_allow_list_that_grew_or_shrank_unpinned_fails() {
    let grew = allow_count_violation(10, 9).expect("a list that grew fails");
    assert!(grew.contains("only shrinks"), "{grew}");
    let shrank = allow_count_violation(8, 9).expect("a list that shrank unpinned fails");
    assert!(
        shrank.contains("lower ALLOW_ENTRIES") && shrank.contains("to 8"),
        "{shrank}"
    );
    assert_eq!(allow_count_violation(9, 9), None);
}

#[test]
fn a_planted_long_function_long_file_or_unitless_bound_fails() {
    let body = "    let x = 1;\n".repeat(FN_LINES_MAX);
    let source = format!(
        "/// Items kept.\nconst ITEMS_KEPT_MAX: usize = 3;\nconst WAIT_MAX: std::time::Duration = std::time::Duration::ZERO;\nconst BODY_BYTES_MAX: usize = 1;\nconst PEERS_MAX: usize = 8;\nstatic SLOTS_MAX: usize = 2;\n\nfn short() {{}}\n\nfn long() {{\n{body}}}\n\nstruct S;\nimpl S {{\n    fn method(&self) {{\n{body}    }}\n}}\n\n#[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{body}    }}\n    const UNITLESS_MAX: usize = 1;\n}}\n\n#[cfg(test)]\nmod more_tests;\n"
    );
    let measured = measure(&source).expect("parses");
    assert_eq!(
        measured.unitless_bounds,
        vec!["PEERS_MAX".to_string(), "SLOTS_MAX".to_string()]
    );
    assert_eq!(measured.test_modules, vec!["more_tests".to_string()]);
    let long: Vec<&str> = measured
        .functions
        .iter()
        .filter(|(_, lines)| *lines > FN_LINES_MAX)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(long, vec!["long", "method"]);
    // The test module's lines do not count.
    let test_module = FN_LINES_MAX + 6;
    assert_eq!(
        measured.lines,
        source.lines().count() - test_module - 2,
        "{measured:?}"
    );

    let files = BTreeMap::from([("crates/x/src/a.rs".to_string(), measured)]);
    let allowed =
        allow_list("# why\nfn crates/x/src/a.rs::long -- a planted long function\n").expect("list");
    let wrong = length_violations(&files, &allowed);
    assert_eq!(wrong.len(), 1, "{wrong:#?}");
    assert!(
        wrong[0].starts_with("crates/x/src/a.rs::method: "),
        "{wrong:#?}"
    );
    // An entry that breaks no rule must go.
    let stale = allow_list("file crates/x/src/a.rs -- it was long once\nfn crates/x/src/a.rs::long -- a planted long function\nfn crates/x/src/a.rs::method -- a planted long method\n").expect("list");
    let wrong = length_violations(&files, &stale);
    assert_eq!(wrong.len(), 1, "{wrong:#?}");
    assert!(
        wrong[0].contains("`file crates/x/src/a.rs` breaks no rule"),
        "{wrong:#?}"
    );
    // A file too long.
    let many = format!("{}fn f() {{}}\n", "// a line\n".repeat(FILE_LINES_MAX));
    let files = BTreeMap::from([(
        "crates/x/src/b.rs".to_string(),
        measure(&many).expect("parses"),
    )]);
    let wrong = length_violations(&files, &BTreeSet::new());
    assert_eq!(wrong.len(), 1, "{wrong:#?}");
    assert!(wrong[0].contains("more than 600: split it"), "{wrong:#?}");
    for bad in ["fn x", "fn x -- short", "dir x -- a long enough reason"] {
        assert!(allow_list(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------
// The rules over the workspace.

#[test]
fn the_workspace_keeps_the_house_rules() {
    let root = root();
    let map = code_map(&read(&root.join("ARCHITECTURE.md")));
    let crates = workspace_crates();
    let mut wrong = code_map_violations(&map, &crates);

    let dependencies = normal_dependencies();
    let pure: BTreeSet<&str> = map
        .iter()
        .filter(|(_, row)| row.io == "none")
        .map(|(name, _)| name.as_str())
        .chain(PURE_AT_LEAST.iter().copied())
        .collect();
    for name in pure {
        let Some(closure) = dependencies.get(name) else {
            wrong.push(format!(
                "crates/{name}: a pure crate that `cargo metadata` does not list"
            ));
            continue;
        };
        wrong.extend(impure_dependencies(name, closure));
        let clippy = root.join("crates").join(name).join("clippy.toml");
        match std::fs::read_to_string(&clippy) {
            Ok(text) => wrong.extend(missing_bans(name, &text)),
            Err(_) => wrong.push(format!(
                "crates/{name}: a pure crate has no clippy.toml: add one that bans what REQUIRED_METHOD_BANS and REQUIRED_TYPE_BANS name"
            )),
        }
    }

    let measured = measure_workspace(&crates);
    let allowed = allow_list(&read(&root.join("tidy-allow.txt"))).unwrap_or_else(|e| panic!("{e}"));
    wrong.extend(allow_count_violation(allowed.len(), ALLOW_ENTRIES));

    wrong.extend(length_violations(&measured, &allowed));
    for (path, measured) in &measured {
        for bound in &measured.unitless_bounds {
            wrong.push(format!(
                "{path}: `{bound}` says no unit: name it (`…_BYTES_MAX`, `…_SECS_MAX`) or say in its doc what it counts"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} house rules broken:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
