//! The data plane's layers point one way (see the module doc of `lib.rs`).
//! This test reads every source file of the library, collects each
//! `crate::…` (and `super::…` leaving the top-level module) reference in
//! `use` items, paths and macro bodies, and fails when a top-level module
//! uses one of a higher layer, when top-level modules form a cycle, or when
//! a module is missing from [`LAYERS`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// The layers, bottom first: a module may use its own layer and those
/// below. Kept in step with the module doc of `lib.rs`.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &["domain", "instant", "text"]),
    ("errors", &["error"]),
    ("pure decisions", &["conflict", "access"]),
    ("storage", &["storage", "redis_conn"]),
    (
        "buses and records",
        &[
            "metrics",
            "telemetry",
            "audit",
            "fanout",
            "analytics",
            "presence",
        ],
    ),
    ("services", &["sync", "keys", "auth"]),
    ("configuration", &["config"]),
    ("shared state", &["state"]),
    ("edges", &["http", "socket"]),
    ("wiring", &["server", "app"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Top-level module → the top-level modules it refers to, each with the
/// first file that does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Collects the top-level modules a file refers to.
struct Refs {
    /// The module path being read, e.g. `["auth", "policy"]` (inline
    /// modules such as `mod tests { … }` are pushed while inside them).
    module: Vec<String>,
    found: BTreeSet<String>,
}

impl Refs {
    /// Resolves a path's leading segments to a top-level module, if it
    /// leaves the file's own top-level module through `crate` or `super`.
    fn add(&mut self, segments: &[String]) {
        let mut at: Vec<String> = self.module.to_vec();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                at.clear();
                rest = &rest[1..];
            }
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    at.pop();
                    rest = &rest[1..];
                }
            }
            _ => return,
        }
        let top = match at.first() {
            Some(top) => top.clone(),
            None => match rest.first() {
                Some(name) => name.clone(),
                None => return,
            },
        };
        if Some(&top) != self.module.first() {
            self.found.insert(top);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
        }
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(&segments);
        syn::visit::visit_path(self, p);
    }

    /// Macro bodies are tokens to syn: look for `crate :: name` in them.
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let tokens: Vec<String> = flatten(m.tokens.clone());
        for w in tokens.windows(4) {
            if (w[0] == "crate" || w[0] == "super") && w[1] == ":" && w[2] == ":" {
                self.add(&[w[0].clone(), w[3].clone()]);
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

fn flatten(tokens: proc_macro2::TokenStream) -> Vec<String> {
    tokens
        .into_iter()
        .flat_map(|t| match t {
            proc_macro2::TokenTree::Group(g) => flatten(g.stream()),
            other => vec![other.to_string()],
        })
        .collect()
}

/// The module path of a file under `src`: `auth/policy.rs` → `auth::policy`,
/// `auth/mod.rs` → `auth`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the library's top-level modules (`main.rs`, the binary, is
/// a client of the library and not part of it).
fn graph_of(sources: &[(Vec<String>, String)]) -> Graph {
    let mut graph = Graph::new();
    for (module, text) in sources {
        let Some(top) = module.first() else { continue };
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{module:?}: {e}"));
        let mut refs = Refs {
            module: module.clone(),
            found: BTreeSet::new(),
        };
        refs.visit_file(&file);
        let edges = graph.entry(top.clone()).or_default();
        for to in refs.found {
            edges.entry(to).or_insert_with(|| module.join("::"));
        }
    }
    graph
}

fn library_sources() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|f| (module_path(&src, &f), f))
        .filter(|(m, _)| m.as_slice() != ["main"] && m.as_slice() != ["lib"])
        .map(|(m, f)| (m, std::fs::read_to_string(f).expect("readable")))
        .collect()
}

/// Every way the graph breaks the rules, as readable lines.
fn violations(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, tos) in graph {
        let Some(lf) = layer_of(from) else {
            out.push(format!(
                "module `{from}` is in no layer: add it to LAYERS and lib.rs"
            ));
            continue;
        };
        for (to, file) in tos {
            match layer_of(to) {
                Some(lt) if lt > lf => out.push(format!(
                    "`{from}` ({}) uses `{to}` ({}), a layer above it, in `{file}`",
                    LAYERS[lf].0, LAYERS[lt].0
                )),
                Some(_) => {}
                None => out.push(format!("`{from}` uses `{to}`, which is in no layer")),
            }
        }
    }
    out.extend(cycles(graph));
    out
}

/// Cycles among top-level modules (the layer rule lets them hide within
/// one layer): each strongly connected component of more than one module,
/// found by Kosaraju's two passes.
fn cycles(graph: &Graph) -> Vec<String> {
    fn finish(graph: &Graph, at: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if seen.insert(at.to_string()) {
            for next in graph.get(at).into_iter().flat_map(|m| m.keys()) {
                finish(graph, next, seen, order);
            }
            order.push(at.to_string());
        }
    }
    let mut reversed = Graph::new();
    for (from, tos) in graph {
        for to in tos.keys() {
            reversed
                .entry(to.clone())
                .or_default()
                .insert(from.clone(), String::new());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        finish(graph, m, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for m in order.iter().rev() {
        let mut component = Vec::new();
        finish(&reversed, m, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            out.push(format!("import cycle among: {}", component.join(", ")));
        }
    }
    out.sort();
    out
}

#[test]
fn layers_only_point_down() {
    let graph = graph_of(&library_sources());
    // The module graph, by layer, for `cargo test --test architecture --
    // --nocapture` (and a reviewer).
    for (layer, mods) in LAYERS {
        for m in *mods {
            let uses: Vec<&str> = graph
                .get(*m)
                .map(|edges| {
                    edges
                        .keys()
                        .map(String::as_str)
                        .filter(|t| t != m)
                        .collect()
                })
                .unwrap_or_default();
            eprintln!("{layer:>18} | {m} -> {}", uses.join(", "));
        }
    }
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "{} architecture violations:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn every_layer_module_exists() {
    let graph = graph_of(&library_sources());
    for (_, mods) in LAYERS {
        for m in *mods {
            assert!(
                graph.contains_key(*m),
                "LAYERS names `{m}`, which the crate lacks"
            );
        }
    }
}

/// The checker itself: a back-edge, a cycle and an unplaced module are
/// each caught, and allowed references pass.
#[test]
fn the_checker_catches_back_edges_cycles_and_strays() {
    let module = |path: &str| path.split("::").map(String::from).collect::<Vec<_>>();
    let ok = vec![
        (
            module("storage::items"),
            "use crate::{domain::Item, error::Error};".to_string(),
        ),
        (
            module("http"),
            "fn f() { crate::sync::apply(); super::storage::x(); }".to_string(),
        ),
    ];
    assert_eq!(violations(&graph_of(&ok)), Vec::<String>::new());

    let back = vec![(
        module("storage::items"),
        "use crate::http::router;".to_string(),
    )];
    assert_eq!(
        violations(&graph_of(&back)),
        vec![
            "`storage` (storage) uses `http` (edges), a layer above it, in `storage::items`"
                .to_string()
        ]
    );
    let in_macro = vec![(
        module("domain"),
        "fn f() { tracing::info!(x = ?crate::config::X); }".to_string(),
    )];
    assert_eq!(
        violations(&graph_of(&in_macro)),
        vec![
            "`domain` (domain) uses `config` (configuration), a layer above it, in `domain`"
                .to_string()
        ]
    );
    let cycle = vec![
        (module("fanout"), "use crate::analytics::A;".to_string()),
        (
            module("analytics::kafka"),
            "use crate::fanout::F;".to_string(),
        ),
    ];
    assert_eq!(
        violations(&graph_of(&cycle)),
        vec!["import cycle among: analytics, fanout".to_string()]
    );
    let stray = vec![(module("misc"), "use crate::domain::Item;".to_string())];
    assert_eq!(
        violations(&graph_of(&stray)),
        vec!["module `misc` is in no layer: add it to LAYERS and lib.rs".to_string()]
    );
}
