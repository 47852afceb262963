//! The top-level modules of `crates/larder/src` form layers: no module reaches, directly or
//! through others, back to a module that depends on it (issue #17).
//!
//! The test reads the sources, so it sees what the compiler sees minus what does not make a
//! dependency: comments (doc links included), the contents of string literals and
//! `#[cfg(test)]` items. A module's references are every `crate::x`, every name in
//! `use crate::{x, …}`, `super::…` paths that climb to the crate root, and the crate root's
//! re-exports (`crate::Config` is a reference to `config`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges `(from, to)` that lie on a cycle today and are being removed. Each one is allowed
/// only while it still closes a cycle: when a restructuring breaks it, the test fails until it
/// is deleted from here, so this list only shrinks. Everything else must be acyclic.
const ALLOWED_CYCLE_EDGES: &[(&str, &str)] = &[];

/// The folder of the library's sources.
fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read source folder")
        .map(|e| e.expect("folder entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without comments, with every string and character literal emptied (`"…"` becomes
/// `""`), so that neither a doc link nor a path inside a message counts as a reference.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if (c == 'r' || (c == 'b' && at(i + 1) == 'r'))
            && !at(i.wrapping_sub(1)).is_alphanumeric()
            && at(i.wrapping_sub(1)) != '_'
            && {
                let mut j = i + if c == 'b' { 2 } else { 1 };
                while at(j) == '#' {
                    j += 1;
                }
                at(j) == '"'
            }
        {
            // A raw string: r"…", r#"…"#, br"…"; it ends at a quote followed by as many #.
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}', '"') or a lifetime ('a).
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Returns true if and only if `c` can be part of an identifier.
fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `code` (already without comments and literals) without its `#[cfg(test)]` items: the
/// attribute and the item after it, up to its `;` or its closing brace. Returns the code and
/// the names of `#[cfg(test)] mod name;` declarations, whose files are tests too.
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut test_files = Vec::new();
    let mut rest = code;
    while let Some(pos) = rest.find(ATTR) {
        out.push_str(&rest[..pos]);
        let item = &rest[pos + ATTR.len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        let words: Vec<&str> = item[..end]
            .split(|c: char| !is_ident(c))
            .filter(|w| !w.is_empty())
            .collect();
        if item[..end].ends_with(';')
            && let Some(i) = words.iter().position(|w| *w == "mod")
            && let Some(name) = words.get(i + 1)
        {
            test_files.push((*name).to_owned());
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, test_files)
}

/// The module path of a source file relative to `src`: `store/mod.rs` is `["store"]`,
/// `store/codec.rs` is `["store", "codec"]`, `lib.rs` is `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The identifier at the start of `s`, if any.
fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first names of every path in a `use` tree's braces: `{a, b::c, d::{e, f}, g as h}`
/// gives `a`, `b`, `d`, `g`. `s` starts just after the opening brace.
fn brace_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expect_head = true;
    let mut k = 0;
    let bytes: Vec<char> = s.chars().collect();
    while k < bytes.len() {
        let c = bytes[k];
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if is_ident(c) && expect_head && depth == 0 => {
                let rest: String = bytes[k..].iter().collect();
                let name = ident_at(&rest).to_owned();
                k += name.chars().count();
                heads.push(name);
                expect_head = false;
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    heads
}

/// The names of the crate-root items each path of `code` starts from, seen from a file whose
/// module path is `path`: `crate::x…`, `crate::{x, y}`, and `super::…` climbing to the root.
fn root_references(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    for (idx, &(byte, _)) in chars.iter().enumerate() {
        let before = idx.checked_sub(1).map(|k| chars[k].1).unwrap_or(' ');
        if is_ident(before) || before == ':' {
            continue;
        }
        let rest = &code[byte..];
        let after = if let Some(after) = rest.strip_prefix("crate::") {
            after
        } else if rest.starts_with("super::") {
            let mut after = rest;
            let mut climbs = 0;
            while let Some(a) = after.strip_prefix("super::") {
                after = a;
                climbs += 1;
            }
            // A file's own module is its path; `super` climbs from there.
            if climbs != path.len() {
                continue;
            }
            after
        } else {
            continue;
        };
        if let Some(inner) = after.strip_prefix('{') {
            found.extend(brace_heads(inner));
        } else {
            let name = ident_at(after);
            if !name.is_empty() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

/// The crate root's re-exports: item name → the top-level module it comes from, from every
/// `pub use module::…;` of lib.rs.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(pos) = stmt.find("pub use ") else {
            continue;
        };
        let path = stmt[pos + "pub use ".len()..].trim();
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let module = ident_at(path);
        if !modules.contains(module) {
            continue;
        }
        // Every name that the statement makes public: the last word of each leaf (`x as y`
        // exports `y`).
        for word in path
            .split([',', '{', '}'])
            .filter_map(|leaf| leaf.split(|c: char| !is_ident(c)).rfind(|w| !w.is_empty()))
        {
            map.insert(word.to_owned(), module.to_owned());
        }
    }
    map
}

/// The dependency graph of the top-level modules.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(&src, f).first().cloned())
        .collect();
    let mut codes = Vec::new();
    let mut test_files = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let (code, tests) = strip_test_items(&strip_comments_and_literals(&text));
        let path = module_path(&src, file);
        let dir = file.parent().expect("folder").to_path_buf();
        for name in tests {
            test_files.insert(dir.join(format!("{name}.rs")));
            test_files.insert(dir.join(name).join("mod.rs"));
        }
        codes.push((file.clone(), path, code));
    }
    let lib = codes
        .iter()
        .find(|(_, path, _)| path.is_empty())
        .map(|(_, _, code)| code.clone())
        .expect("lib.rs");
    let reexports = root_reexports(&lib, &modules);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (file, path, code) in &codes {
        let Some(from) = path.first() else {
            continue; // lib.rs: the root re-exports every layer and is no layer itself
        };
        if test_files.contains(file) {
            continue;
        }
        for name in root_references(code, path) {
            let to = if modules.contains(&name) {
                Some(&name)
            } else {
                reexports.get(&name)
            };
            if let Some(to) = to.filter(|to| *to != from) {
                graph
                    .get_mut(from)
                    .expect("every module has a node")
                    .insert(to.clone());
            }
        }
    }
    graph
}

/// A path of modules from `from` to `to` (both included), if `to` is reachable.
fn path_between(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(m) = queue.pop_front() {
        if m == to {
            let mut path = vec![to.to_owned()];
            let mut at = to;
            while let Some(p) = parent.get(at) {
                path.push((*p).to_owned());
                at = p;
            }
            path.reverse();
            return Some(path);
        }
        for next in graph.get(m).into_iter().flatten() {
            if seen.insert(next.as_str()) {
                parent.insert(next.as_str(), m);
                queue.push_back(next.as_str());
            }
        }
    }
    None
}

/// A cycle of `graph` as `a -> b -> … -> a`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for (from, tos) in graph {
        for to in tos {
            if let Some(mut path) = path_between(graph, to, from) {
                path.insert(0, from.clone());
                return Some(path);
            }
        }
    }
    None
}

/// The graph, one module a line, for failure messages.
fn render(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph
        .iter()
        .map(|(m, tos)| {
            let tos: Vec<&str> = tos.iter().map(String::as_str).collect();
            format!("  {m} -> {}", tos.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_have_no_cycles_beyond_the_allow_list() {
    let graph = module_graph();
    let shown = render(&graph);
    // The allow-list only shrinks: each entry must still be an edge on a cycle.
    for (from, to) in ALLOWED_CYCLE_EDGES {
        let has_edge = graph.get(*from).is_some_and(|tos| tos.contains(*to));
        assert!(
            has_edge && path_between(&graph, to, from).is_some(),
            "{from} -> {to} no longer closes a cycle: delete it from ALLOWED_CYCLE_EDGES\n\nmodule graph:\n{shown}"
        );
    }
    let mut rest = graph.clone();
    for (from, to) in ALLOWED_CYCLE_EDGES {
        if let Some(tos) = rest.get_mut(*from) {
            tos.remove(*to);
        }
    }
    if let Some(cycle) = find_cycle(&rest) {
        panic!(
            "the top-level modules have an import cycle: {}\n(allowed while being removed: {ALLOWED_CYCLE_EDGES:?})\n\nmodule graph:\n{shown}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_lower_layers_do_not_import_the_ones_built_on_them() {
    // Issue #17's layering of the memory and fast-load modules: the OS probes are the bottom,
    // cuda builds on them, fastload on cuda; diagnose, doctor and metrics are leaves that no
    // engine module uses as a library.
    let graph = module_graph();
    let shown = render(&graph);
    let deps = |m: &str| graph.get(m).cloned().unwrap_or_default();
    let os = deps("os");
    assert!(
        os.iter().all(|m| m == "error"),
        "os must use nothing but the error type: {os:?}\n{shown}"
    );
    assert!(!deps("cuda").contains("fastload"), "{shown}");
    for (module, tos) in &graph {
        for leaf in ["diagnose", "doctor"] {
            assert!(
                !tos.contains(leaf),
                "{module} uses {leaf}, a report built on the engine, not a library\n{shown}"
            );
        }
        assert!(
            !tos.contains("fastload"),
            "{module} uses fastload, which builds on the engine's lower layers\n{shown}"
        );
    }
}

#[test]
fn the_scanner_ignores_comments_literals_and_tests() {
    let code = r##"
//! Uses [`crate::doc_link`].
use crate::{alpha, beta::x, gamma::{y, z}, Exported as Renamed};
/* block /* nested crate::hidden */ still comment crate::hidden2 */
fn f() {
    let s = "crate::in_string // not a comment";
    let r = r#"crate::in_raw"#;
    let c = '"';
    let t: &'static str = "x";
    crate::delta::call();
    super::epsilon::call();
}
#[cfg(test)]
mod tests {
    use crate::test_only;
}
#[cfg(test)]
mod more_tests;
"##;
    let (stripped, test_files) = strip_test_items(&strip_comments_and_literals(code));
    assert_eq!(test_files, ["more_tests"]);
    let found = root_references(&stripped, &["here".to_owned()]);
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(
        found,
        ["Exported", "alpha", "beta", "delta", "epsilon", "gamma"]
    );
    // From a file one level deeper, `super::` names its own parent, not the root.
    assert!(root_references(&stripped, &["a".into(), "b".into()]).contains("alpha"));
    assert!(!root_references(&stripped, &["a".into(), "b".into()]).contains("epsilon"));
    let lib = "pub use config::{Config, Source as Origin};\npub use error::Result;\nmod x;";
    let modules = BTreeSet::from(["config".to_owned(), "error".to_owned()]);
    let map = root_reexports(lib, &modules);
    assert_eq!(map.get("Config").map(String::as_str), Some("config"));
    assert_eq!(map.get("Origin").map(String::as_str), Some("config"));
    assert_eq!(map.get("Result").map(String::as_str), Some("error"));
    // A cycle is found and named.
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
