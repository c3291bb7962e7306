//! The crate's module dependencies point one way: every `crate::X` reference
//! in `src/<top>/**.rs` (test code included) must be an edge that the table
//! in docs/ARCHITECTURE.md ("Module dependencies") allows, and the allowed
//! edges have no cycle. The CLI (`src/main.rs`, `src/cli/`) is a separate
//! binary crate on top and is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Table = BTreeMap<String, BTreeSet<String>>;

const HEADING: &str = "## Module dependencies";

/// The allowed edges: rows `| `module` | `a`, `b` |` of the table under
/// [`HEADING`] (a `—` cell allows nothing).
fn parse_table(doc: &str) -> Result<Table, String> {
    let start = doc
        .find(HEADING)
        .ok_or_else(|| format!("docs/ARCHITECTURE.md has no `{HEADING}` section"))?;
    let mut table = Table::new();
    let rows = doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    for row in rows.skip(2) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [module, allowed] = cells[..] else {
            return Err(format!("table row `{row}`: expected 2 cells"));
        };
        let name = |s: &str| s.trim().trim_matches('`').to_string();
        let deps = allowed
            .split(',')
            .map(name)
            .filter(|d| !d.is_empty() && d != "—")
            .collect();
        table.insert(name(module), deps);
    }
    if table.is_empty() {
        return Err(format!("`{HEADING}` holds no table rows"));
    }
    Ok(table)
}

/// `src` without comments (doc comments hold links, not dependencies).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find('/') {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        if tail.starts_with("//") {
            rest = tail.find('\n').map_or("", |j| &tail[j..]);
        } else if tail.starts_with("/*") {
            rest = tail.find("*/").map_or("", |j| &tail[j + 2..]);
        } else {
            out.push('/');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every path after `crate::`, including each item of
/// a (multi-line, nested) `crate::{a::X, b}` group.
fn crate_refs(src: &str) -> BTreeSet<String> {
    let src = strip_comments(src);
    let mut refs = BTreeSet::new();
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(i) = src[from..].find("crate::").map(|i| i + from) {
        from = i + "crate::".len();
        let before = i.checked_sub(1).map(|j| bytes[j] as char);
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = src[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start) = (0usize, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        refs.insert(ident(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(ident(rest).to_string());
        }
    }
    refs.remove("");
    refs
}

/// The crate-root re-exports of lib.rs (`pub use module::{A, B};`): item ->
/// the module it comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in strip_comments(lib).lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident(path);
        let items = path[module.len()..].trim_start_matches("::");
        let items = items
            .trim_end_matches(';')
            .trim_matches(|c| c == '{' || c == '}');
        for item in items.split(',').map(|i| ident(i.trim())) {
            map.insert(item.to_string(), module.to_string());
        }
    }
    map
}

/// Every edge not in `table` (a module missing from the table allows
/// nothing), as `file: from -> to` lines. `modules` are the crate's
/// top-level modules and `root` its root re-exports (`crate::RoutingError`
/// is an edge to `routing`); any other crate-root path is reported, since it
/// would hide an edge.
fn violations(
    uses: &[(String, String, BTreeSet<String>)],
    table: &Table,
    modules: &BTreeSet<String>,
    root: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, from, refs) in uses {
        for to in refs {
            let to = root.get(to).unwrap_or(to);
            if to == from || to == "self" {
                continue;
            }
            if !modules.contains(to) {
                bad.push(format!(
                    "{file}: {from} -> crate::{to} (not a module nor a root re-export)"
                ));
            } else if !table.get(from).is_some_and(|a| a.contains(to)) {
                bad.push(format!("{file}: {from} -> {to} (not in the table)"));
            }
        }
    }
    bad
}

/// A cycle among `table`'s edges, as `a -> b -> a`, if any.
fn cycle(table: &Table) -> Option<String> {
    fn visit(n: &str, t: &Table, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> bool {
        if let Some(i) = path.iter().position(|p| p == n) {
            path.drain(..i);
            path.push(n.to_string());
            return true;
        }
        if done.contains(n) {
            return false;
        }
        path.push(n.to_string());
        for d in t.get(n).into_iter().flatten() {
            if visit(d, t, path, done) {
                return true;
            }
        }
        path.pop();
        done.insert(n.to_string());
        false
    }
    let mut done = BTreeSet::new();
    for n in table.keys() {
        let mut path = Vec::new();
        if visit(n, table, &mut path, &mut done) {
            return Some(path.join(" -> "));
        }
    }
    None
}

fn rs_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            rs_files(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn dependencies_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let table = parse_table(&doc).unwrap();
    if let Some(c) = cycle(&table) {
        panic!("docs/ARCHITECTURE.md allows a cycle: {c}");
    }
    let mut modules = BTreeSet::new();
    let mut uses = Vec::new();
    for e in fs::read_dir(root.join("src")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        if ["lib", "main", "cli"].contains(&stem.as_str()) {
            continue;
        }
        modules.insert(stem.clone());
        let mut files = Vec::new();
        rs_files(&p, &mut files);
        for f in files {
            let refs = crate_refs(&fs::read_to_string(&f).unwrap());
            let rel = f.strip_prefix(root).unwrap().display().to_string();
            uses.push((rel, stem.clone(), refs));
        }
    }
    let missing: Vec<_> = modules.iter().filter(|m| !table.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "modules missing from the table: {missing:?}"
    );
    let root_items = root_reexports(&fs::read_to_string(root.join("src/lib.rs")).unwrap());
    let bad = violations(&uses, &table, &modules, &root_items);
    assert!(
        bad.is_empty(),
        "edges docs/ARCHITECTURE.md does not allow:\n{}",
        bad.join("\n")
    );
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parser_reads_groups_paths_and_skips_comments() {
    let src = "use crate::{\n    routing::{Policy, RouterConfig},\n    io::npy,\n};\n\
               // crate::ep::x in a comment\n/// [`crate::model::Model`]\n\
               fn f() { let _ = crate::trace::Skew::Mixtral; }\n\
               pub(crate) fn g() {}\nuse mycrate::backend;\n";
    assert_eq!(crate_refs(src), set(&["routing", "io", "trace"]));
}

#[test]
fn checker_fails_on_an_upward_edge_and_a_cycle() {
    let doc = "x\n## Module dependencies\n\n| module | may import |\n| --- | --- |\n\
               | `low` | — |\n| `high` | `low` |\n";
    let table = parse_table(doc).unwrap();
    assert_eq!(table["high"], set(&["low"]));
    assert!(cycle(&table).is_none());
    let modules = set(&["low", "high"]);
    let uses = vec![
        ("src/high.rs".to_string(), "high".to_string(), set(&["low"])),
        (
            "src/low/a.rs".to_string(),
            "low".to_string(),
            set(&["high", "Item"]),
        ),
    ];
    let root = root_reexports("pub mod low;\npub use high::{Up, Other};\n");
    assert_eq!(root["Up"], "high");
    let bad = violations(&uses, &table, &modules, &root);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("src/low/a.rs: low -> crate::Item"));
    assert!(bad[1].contains("src/low/a.rs: low -> high"));
    let up = vec![("src/low/b.rs".into(), "low".into(), set(&["Up"]))];
    let bad = violations(&up, &table, &modules, &root);
    assert_eq!(bad, ["src/low/b.rs: low -> high (not in the table)"]);
    let mut cyclic = table.clone();
    cyclic.get_mut("low").unwrap().insert("high".into());
    assert_eq!(cycle(&cyclic).unwrap(), "high -> low -> high");
}
