//! The crate's module dependencies point one way: every `crate::X` reference
//! in `src/<top>/**.rs` (test code included) must be an edge that the table
//! in docs/ARCHITECTURE.md ("Module dependencies") allows, and the allowed
//! edges have no cycle. The CLI (`src/main.rs`, `src/cli/`) is a separate
//! binary crate on top and is not checked. Below: where `unsafe` may appear.

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

// `unsafe` stays in the CUDA kernel layer (src/cuda/, whose launch layer and
// driver glue need it) and two documented CPU glue sites; the rest of src/
// (the CLI included) has none. Every unsafe block or impl there carries a
// `SAFETY:` comment and every unsafe fn a `# Safety` section.

/// Files outside src/cuda/ that may hold `unsafe`: the safetensors mmap and
/// the gemm crate's raw-pointer call.
const UNSAFE_GLUE: [&str; 2] = ["src/model/weights.rs", "src/backend/cpu/gemm.rs"];

/// Generated by bindgen (its `extern` block is unsafe by definition).
const GENERATED: &str = "src/cuda/sys.rs";

/// `src` with comments, string and char literals blanked to spaces (newlines
/// kept, so byte offsets and line numbers still match).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let end = if rest.starts_with(b"//") {
            rest.iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |j| i + j)
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if !ident_before && (rest.starts_with(b"r\"") || rest.starts_with(b"r#\"")) {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"').chain(vec![b'#'; hashes]).collect();
            let body = i + 2 + hashes;
            (body..b.len())
                .find(|&j| b[j..].starts_with(&close))
                .map_or(b.len(), |j| j + close.len())
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' && (rest.get(1) == Some(&b'\\') || rest.get(2) == Some(&b'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            let j = i + if rest[1] == b'\\' { 2 } else { 1 };
            (j + 1..b.len())
                .find(|&k| b[k] == b'\'')
                .map_or(b.len(), |k| k + 1)
        } else {
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end.max(i + 1);
    }
    String::from_utf8(out).expect("blanking keeps UTF-8: multi-byte characters become spaces")
}

/// Each `unsafe` keyword outside comments and literals: (line, what follows:
/// `{`, `fn`, `impl`, ...).
fn unsafe_sites(src: &str) -> Vec<(usize, String)> {
    let code = code_only(src);
    let mut out = Vec::new();
    for (i, _) in code.match_indices("unsafe") {
        let before = code[..i].chars().next_back();
        let after = &code[i + "unsafe".len()..];
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if word(before) || word(after.chars().next()) {
            continue;
        }
        let next = after.trim_start();
        let what = if next.starts_with('{') {
            "{".to_string()
        } else {
            ident(next).to_string()
        };
        out.push((code[..i].matches('\n').count() + 1, what));
    }
    out
}

/// The sites of one file that lack their justification: a block or impl
/// without `SAFETY` on its line or in the comments of the few lines above, an
/// unsafe fn without `# Safety` in its doc.
fn unjustified(src: &str, sites: &[(usize, String)]) -> Vec<usize> {
    let lines: Vec<&str> = src.lines().collect();
    let mut bad = Vec::new();
    for (line, what) in sites {
        let above = lines[..line - 1]
            .iter()
            .rev()
            .take_while(|l| {
                let t = l.trim_start();
                t.starts_with("//") || t.starts_with("#[")
            })
            .map(|l| l.trim_start())
            .collect::<Vec<_>>();
        let own = lines[line - 1];
        let ok = if what == "extern" {
            true // a function pointer type (`unsafe extern "C" fn`): calling it is the site
        } else if what == "fn" {
            above
                .iter()
                .any(|l| l.starts_with("///") && l.contains("# Safety"))
        } else {
            // A block inside an expression: its comment may sit a few lines up.
            let near = lines[line.saturating_sub(6)..line - 1].iter();
            own.contains("SAFETY") || above.iter().chain(near).any(|l| l.contains("SAFETY"))
        };
        if !ok {
            bad.push(*line);
        }
    }
    bad
}

#[test]
fn unsafe_stays_in_the_kernel_layer_and_is_justified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    let (mut outside, mut undocumented) = (Vec::new(), Vec::new());
    for f in files {
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        if rel == GENERATED {
            continue;
        }
        let src = fs::read_to_string(&f).unwrap();
        let sites = unsafe_sites(&src);
        if !rel.starts_with("src/cuda/") && !UNSAFE_GLUE.contains(&rel.as_str()) {
            outside.extend(sites.iter().map(|(l, _)| format!("{rel}:{l}")));
        }
        undocumented.extend(
            unjustified(&src, &sites)
                .into_iter()
                .map(|l| format!("{rel}:{l}")),
        );
    }
    assert!(
        outside.is_empty(),
        "`unsafe` outside src/cuda/ and the CPU glue {UNSAFE_GLUE:?} (move it into the \
         kernel layer behind a safe API):\n{}",
        outside.join("\n")
    );
    assert!(
        undocumented.is_empty(),
        "unsafe without a `// SAFETY:` comment (blocks, impls) or a `# Safety` doc (fns):\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn unsafe_scanner_sees_code_and_skips_comments_and_literals() {
    let src = "// unsafe in a comment\n/* unsafe /* nested */ unsafe */\n\
               let s = \"unsafe\"; let r = r#\"unsafe \"q\"\"#; let c = '\"';\n\
               fn not_unsafe_fn<'a>(x: &'a u8) {}\n\
               let p = unsafe { *q };\n\
               /// # Safety\n/// none needed\nunsafe fn f() {}\n\
               unsafe impl Send for X {}\n";
    let sites = unsafe_sites(src);
    assert_eq!(
        sites,
        [
            (5, "{".to_string()),
            (8, "fn".to_string()),
            (9, "impl".to_string())
        ]
    );
    // The fn has its `# Safety`; the block and the impl have no SAFETY comment.
    assert_eq!(unjustified(src, &sites), [5, 9]);
    let ok = "// SAFETY: q is valid.\nlet p = unsafe { *q };\n";
    assert!(unjustified(ok, &unsafe_sites(ok)).is_empty());
}
