//! The book stays true: its configuration reference lists exactly the config model's keys,
//! and every relative link in it points at a file that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

// Name the plugin crates so their registrations (and config defaults) are linked in.
use switchboard as _;

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src")
}

/// Keys in the first column of the reference table: rows that start with "| `key` |".
fn documented_keys() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(book_src().join("reference/config.md")).expect("config reference");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect()
}

#[test]
fn config_reference_lists_exactly_the_config_keys() {
    let model: BTreeSet<String> = switchboard::registry::all_config_keys()
        .into_keys()
        .collect();
    let book = documented_keys();
    let missing: Vec<&String> = model.difference(&book).collect();
    let extra: Vec<&String> = book.difference(&model).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "book/src/reference/config.md is out of date.\n  not documented: {missing:?}\n  documented but not in the model: {extra:?}"
    );
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("book dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "md") {
            out.push(p);
        }
    }
}

#[test]
fn relative_links_resolve() {
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("chapter");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let resolved = file.parent().expect("parent").join(path);
            if !resolved.exists() {
                broken.push(format!("{}: {target}", file.display()));
            } else if !resolved
                .canonicalize()
                .is_ok_and(|r| r.starts_with(book_src().canonicalize().expect("book/src")))
            {
                // The rendered book holds book/src only: a link out of it breaks there.
                broken.push(format!(
                    "{}: {target} is outside book/src (broken in the rendered book)",
                    file.display()
                ));
            }
        }
        for line in text.lines() {
            if let Some(inc) = line
                .trim()
                .strip_prefix("{{#include ")
                .and_then(|l| l.strip_suffix("}}"))
            {
                let (path, anchor) = inc.split_once(':').unwrap_or((inc, ""));
                let resolved = file.parent().expect("parent").join(path);
                match std::fs::read_to_string(&resolved) {
                    Err(_) => broken.push(format!("{}: include {path}", file.display())),
                    Ok(src)
                        if !anchor.is_empty() && !src.contains(&format!("ANCHOR: {anchor}")) =>
                    {
                        broken.push(format!(
                            "{}: include {path} has no anchor `{anchor}`",
                            file.display()
                        ));
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links in the book:\n{}",
        broken.join("\n")
    );
}

#[test]
#[ignore = "prints the key list to paste into the reference"]
fn print_config_keys() {
    for (k, v) in switchboard::registry::all_config_keys() {
        println!("{k} = {v}");
    }
}
