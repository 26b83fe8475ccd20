//! The binary end to end: result JSON, JSON errors, bad documents, thread-count independence.
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ericsson-dataset-pipeline");

fn config(dir: &Path, threads: usize, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "engine: rust\ntimeout_s: 60\nthreads: {threads}\ninput_dir: {}\noutput_path: {}\n\
         normalize: {{nfc: true, strip_page_furniture: true, strip_toc: true, strip_toc_block: true, reflow: true}}\n\
         chunk: {{max_chars: 400, overlap_chars: 40, min_chars: 50, clause_headings: true, mark_boilerplate: true}}\n\
         dedup: {{exact: true, near: true, shingle_size: 3, num_perm: 64, bands: 16, threshold: 0.7, seed: 1}}\n\
         filters: {{min_chars: 10, min_words: 2, min_alpha_ratio: 0.1, max_table_density: 1.0}}\n{extra}",
        dir.join("documents").display(),
        dir.join(format!("chunks{threads}.jsonl")).display()
    );
    let path = dir.join(format!("process{threads}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn corpus(dir: &Path) {
    let docs = dir.join("documents");
    std::fs::create_dir_all(&docs).unwrap();
    let body: String = (0..30)
        .map(|s| format!("## 4.{s} Clause {s}\nThe UE shall apply configuration {s} when the timer T{s} expires and the gNB indicates it.\n\n"))
        .collect();
    std::fs::write(
        docs.join("a_rel17.md"),
        format!("3GPP TS 38.300 V17.0.0 (2023-03)\n{body}"),
    )
    .unwrap();
    std::fs::write(
        docs.join("a_rel18.md"),
        body.replace("Clause 7\nThe UE shall", "Clause 7\nThe UE may"),
    )
    .unwrap();
    std::fs::write(docs.join("bad.md"), b"## 1 Bad\n\xff\xfe not utf-8").unwrap();
    std::fs::write(docs.join("notes.txt"), "ignored").unwrap();
}

#[test]
fn runs_reports_bad_documents_and_is_thread_independent() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let mut outputs = Vec::new();
    for threads in [1, 2, 3] {
        let out = Command::new(BIN).arg(config(dir.path(), threads, "")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["documents"], 2);
        assert_eq!(result["documents_failed"], 1);
        assert_eq!(result["failures"][0]["kind"], "invalid_utf8");
        assert_eq!(result["failures"][0]["doc_id"], "bad");
        assert!(result["exact_duplicates"].as_u64().unwrap() > 0);
        assert!(result["near_duplicates"].as_u64().unwrap() >= 1);
        let clusters = std::fs::read_to_string(dir.path().join(format!("chunks{threads}.clusters.jsonl"))).unwrap();
        let lines: Vec<serde_json::Value> = clusters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len() as u64, result["duplicate_clusters"].as_u64().unwrap());
        let removed: usize = lines.iter().map(|c| c["duplicates"].as_array().unwrap().len()).sum();
        let counted = result["exact_duplicates"].as_u64().unwrap() + result["near_duplicates"].as_u64().unwrap();
        assert_eq!(removed as u64, counted);
        assert_eq!(lines[0]["kind"], "exact");
        let chunks = std::fs::read(dir.path().join(format!("chunks{threads}.jsonl"))).unwrap();
        outputs.push((chunks, clusters));
    }
    assert!(!outputs[0].0.is_empty());
    assert!(outputs.iter().all(|o| o == &outputs[0]));
    let first = String::from_utf8(outputs[0].0.clone()).unwrap();
    assert!(!first.contains("3GPP TS 38.300"), "page header stripped");
}

#[test]
fn unknown_key_is_a_json_config_error() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let path = config(dir.path(), 1, "colour: blue\n");
    let out = Command::new(BIN).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["kind"], "config");
    assert!(err["message"].as_str().unwrap().contains("colour"));
    assert_eq!(err["path"], path.display().to_string());
}

#[test]
fn missing_input_dir_is_a_json_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg(config(dir.path(), 1, "")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["kind"], "input");
}

#[test]
fn an_unwritable_clusters_file_is_a_json_output_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let clusters = dir.path().join("chunks1.clusters.jsonl");
    std::fs::create_dir(&clusters).unwrap(); // a folder in its place: the rename fails
    let out = Command::new(BIN).arg(config(dir.path(), 1, "")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["kind"], "output");
    assert_eq!(err["path"], clusters.display().to_string());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "no temp file left: {left:?}"
    );
}

#[test]
fn printed_layout_gets_sections_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("documents");
    std::fs::create_dir_all(&docs).unwrap();
    let body =
        "The frobnicator entity shall deliver each packet to\n\nthe lower layer entity when the timer expires.\n\n";
    let text = format!(
        "Frobnicator protocol specification\n\nImportant notice\n\nThe present document may be copied freely by anyone.\n\n\
         Foreword\n\nThis specification was produced by a working group of volunteers.\n\n\
         1 Scope\n\n{}4 General\n\n4.1 Overview\n\n{}",
        body.repeat(3),
        "Each access node keeps a counter for\n\nevery configured bearer and resets it at handover.\n\n".repeat(3)
    );
    std::fs::write(docs.join("p.md"), text).unwrap();
    let out = Command::new(BIN).arg(config(dir.path(), 1, "")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("chunks1.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"boilerplate") && kinds.contains(&"body"), "{kinds:?}");
    let last = rows.last().unwrap();
    assert_eq!(last["section_path"], serde_json::json!(["4 General", "4.1 Overview"]));
    assert!(last["text"]
        .as_str()
        .unwrap()
        .contains("keeps a counter for every configured bearer"));
}
