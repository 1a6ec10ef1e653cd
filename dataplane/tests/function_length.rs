//! Functions a reader can hold (issue 16 §7): no function or method of the
//! workspace's sources is longer than [`LIMIT`] lines unless the doc comment
//! or comment right above it says why, with a line starting `Long because`.
//! Line counts run from the `fn` keyword (or its first attribute) to the
//! closing brace, as `syn` reports them.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// About one screen: what a reader can hold at once.
const LIMIT: usize = 80;

/// The sources of every crate of the workspace, tests and benches aside.
const CRATES: &[&str] = &["dataplane/src", "operator/src", "crds/src", "scopes/src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// One function longer than the limit.
#[derive(Debug, PartialEq)]
struct Long {
    name: String,
    first_line: usize,
    lines: usize,
}

/// Collects the functions and methods of one file that are over the limit
/// and carry no reason.
struct Finder<'a> {
    source: Vec<&'a str>,
    found: Vec<Long>,
}

impl Finder<'_> {
    fn check(&mut self, name: String, span: proc_macro2::Span) {
        let (first, last) = (span.start().line, span.end().line);
        let lines = last + 1 - first;
        if lines <= LIMIT || self.explained(first) {
            return;
        }
        self.found.push(Long {
            name,
            first_line: first,
            lines,
        });
    }

    /// Whether the comment block right above line `first` (1-based, which
    /// is where the span starts: the first attribute or doc comment) gives
    /// a reason. Doc comments are attributes, so they are inside the span:
    /// look through the span's leading comment and attribute lines too.
    fn explained(&self, first: usize) -> bool {
        let mut at = first.saturating_sub(1);
        // Leading doc comments and attributes inside the span.
        let mut inside = at;
        while let Some(line) = self.source.get(inside) {
            let t = line.trim_start();
            if !(t.starts_with("///") || t.starts_with("//") || t.starts_with("#[")) {
                break;
            }
            if t.contains("Long because") {
                return true;
            }
            inside += 1;
        }
        // Plain comments just above the span.
        while at > 0 {
            at -= 1;
            let t = self.source[at].trim_start();
            if !t.starts_with("//") {
                break;
            }
            if t.contains("Long because") {
                return true;
            }
        }
        false
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.check(f.sig.ident.to_string(), span_of(f));
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.check(f.sig.ident.to_string(), span_of(f));
        syn::visit::visit_impl_item_fn(self, f);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if f.default.is_some() {
            self.check(f.sig.ident.to_string(), span_of(f));
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

fn span_of(node: &impl syn::spanned::Spanned) -> proc_macro2::Span {
    node.span()
}

fn long_functions(source: &str) -> Vec<Long> {
    let file = syn::parse_file(source).expect("the crate parses");
    let mut finder = Finder {
        source: source.lines().collect(),
        found: Vec::new(),
    };
    finder.visit_file(&file);
    finder.found
}

#[test]
fn no_function_is_longer_than_a_screen_without_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in CRATES {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut offenders = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).expect("readable source");
        for long in long_functions(&source) {
            offenders.push(format!(
                "{}:{} `{}` is {} lines (limit {LIMIT}); split it, or say above it why it is `Long because …`",
                path.strip_prefix(&root).unwrap_or(path).display(),
                long.first_line,
                long.name,
                long.lines,
            ));
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

/// The checker itself: a long function is found, a short one and a long
/// one with a reason are not, and methods count as functions.
#[test]
fn the_checker_finds_long_functions_and_accepts_reasons() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n);
    let long = format!("fn big() {{\n{}}}\n", body(LIMIT));
    assert_eq!(
        long_functions(&long),
        vec![Long {
            name: "big".into(),
            first_line: 1,
            lines: LIMIT + 2
        }]
    );
    let short = format!("fn small() {{\n{}}}\n", body(LIMIT - 2));
    assert_eq!(long_functions(&short), vec![]);
    let reasoned = format!(
        "/// Long because: one table.\nfn big() {{\n{}}}\n",
        body(LIMIT)
    );
    assert_eq!(long_functions(&reasoned), vec![]);
    let commented = format!(
        "// Long because: one table.\nfn big() {{\n{}}}\n",
        body(LIMIT)
    );
    assert_eq!(long_functions(&commented), vec![]);
    let method = format!(
        "struct S;\nimpl S {{\n    fn m(&self) {{\n{}    }}\n}}\n",
        body(LIMIT)
    );
    assert_eq!(
        long_functions(&method)
            .into_iter()
            .map(|l| (l.name, l.first_line))
            .collect::<Vec<_>>(),
        vec![("m".to_string(), 3)]
    );
}
