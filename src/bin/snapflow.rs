//! `snapflow`: look at a job's checkpoints, savepoints, state and logs from the command line.
//!
//! ```text
//! snapflow checkpoints list DIR [--json]        every checkpoint of a job's checkpoint directory
//! snapflow checkpoints verify DIR [--json]      every checksum; exit 1 on any problem
//! snapflow checkpoints inspect DIR [ID] [--json]  per vertex and task: key groups, states, sizes
//! snapflow state dump DIR --vertex V --state S [--checkpoint ID] [--key K]
//! snapflow savepoint rescale SRC DST --vertex V --parallelism P
//! snapflow log info DIR [--json]
//! snapflow log verify DIR [--json]
//! ```
//!
//! `DIR` of the checkpoint commands is a job's checkpoint directory (`<root>/<job>`, holding
//! `chk-...` directories) or one checkpoint's or savepoint's directory (holding `_manifest`).
//! Built with `--features object-store` (`s3` for S3), it may also be the URL of the same in an
//! object store: `s3://bucket/prefix/job[/chk-...]`, `file:///path/job`; the `AWS_*`
//! environment variables configure S3 (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, credentials).
//! Input is untrusted: corrupt or foreign files give a message and exit code 1, never a panic.
//! Built with `--features cli`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{json, Value};
#[cfg(feature = "object-store")]
use snapflow::checkpoint::ObjectStoreCheckpointStorage;
use snapflow::checkpoint::{
    rescale_savepoint, CheckpointId, CheckpointStorage, CompletedCheckpoint,
    LocalCheckpointStorage, Manifest,
};
use snapflow::log::{inspect_log, LogInfo};
use snapflow::state::{Dynamic, TaskSnapshot};
use snapflow::{Error, Result};

fn cli() -> Command {
    let dir = || Arg::new("dir").value_name("DIR").required(true);
    let json = || {
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .help("Print JSON instead of text")
    };
    Command::new("snapflow")
        .about("Look at snapflow checkpoints, savepoints, state and logs")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("checkpoints")
                .about("A job's checkpoints and savepoints")
                .subcommand_required(true)
                .subcommand(
                    Command::new("list")
                        .about("Every checkpoint: id, kind, time, size, vertices, parallelism, verified")
                        .arg(dir())
                        .arg(json()),
                )
                .subcommand(
                    Command::new("verify")
                        .about("Check every manifest and state checksum; exit 1 on any problem")
                        .arg(dir())
                        .arg(json()),
                )
                .subcommand(
                    Command::new("inspect")
                        .about("Per vertex and task: key groups, state names, entries, bytes")
                        .arg(dir())
                        .arg(Arg::new("id").value_name("ID").help("Checkpoint id (default: the newest)"))
                        .arg(json()),
                ),
        )
        .subcommand(
            Command::new("state").about("Keyed state").subcommand_required(true).subcommand(
                Command::new("dump")
                    .about("One keyed state's entries as JSON lines {\"key\":..,\"value\":..}")
                    .arg(dir())
                    .arg(Arg::new("vertex").long("vertex").required(true).help("Vertex uid"))
                    .arg(Arg::new("state").long("state").required(true).help("State name"))
                    .arg(Arg::new("checkpoint").long("checkpoint").help("Checkpoint id (default: the newest)"))
                    .arg(Arg::new("key").long("key").help("Only the key whose text is this")),
            ),
        )
        .subcommand(
            Command::new("savepoint").about("Savepoints").subcommand_required(true).subcommand(
                Command::new("rescale")
                    .about("Write a new savepoint with one vertex at another parallelism")
                    .arg(Arg::new("src").value_name("SRC").required(true).help("Savepoint directory"))
                    .arg(Arg::new("dst").value_name("DST").required(true).help("New directory"))
                    .arg(Arg::new("vertex").long("vertex").required(true).help("Vertex uid"))
                    .arg(
                        Arg::new("parallelism")
                            .long("parallelism")
                            .required(true)
                            .value_parser(clap::value_parser!(u32)),
                    ),
            ),
        )
        .subcommand(
            Command::new("log")
                .about("A FileLog directory")
                .subcommand_required(true)
                .subcommand(
                    Command::new("info")
                        .about("Partitions, offsets, segments, bytes")
                        .arg(dir())
                        .arg(json()),
                )
                .subcommand(
                    Command::new("verify")
                        .about("Check every frame; exit 1 on corruption (a torn tail is recoverable)")
                        .arg(dir())
                        .arg(json()),
                ),
        )
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    match run(&matches) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("snapflow: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the command; `Ok(false)` when it found problems.
fn run(m: &ArgMatches) -> Result<bool> {
    let (group, sub) = m.subcommand().ok_or_else(|| usage("no command"))?;
    let (cmd, a) = sub.subcommand().ok_or_else(|| usage("no subcommand"))?;
    let json = a
        .try_get_one::<bool>("json")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    let arg = |name: &str| a.get_one::<String>(name).cloned();
    match (group, cmd) {
        ("checkpoints", "list") => list(&place(arg("dir"))?, json),
        ("checkpoints", "verify") => verify(&place(arg("dir"))?, json),
        ("checkpoints", "inspect") => inspect(&place(arg("dir"))?, id(arg("id"))?, json),
        ("state", "dump") => dump(
            &place(arg("dir"))?,
            id(arg("checkpoint"))?,
            &arg("vertex").unwrap_or_default(),
            &arg("state").unwrap_or_default(),
            arg("key").as_deref(),
        ),
        ("savepoint", "rescale") => {
            let p = a.get_one::<u32>("parallelism").copied().unwrap_or(1);
            let m = rescale_savepoint(
                &path(arg("src"))?,
                &PathBuf::from(arg("dst").unwrap_or_default()),
                &arg("vertex").unwrap_or_default(),
                p,
            )?;
            println!(
                "wrote savepoint {} ({} tasks) to {}",
                m.checkpoint,
                m.tasks.len(),
                arg("dst").unwrap_or_default()
            );
            Ok(true)
        }
        ("log", "info") => log(&path(arg("dir"))?, json, false),
        ("log", "verify") => log(&path(arg("dir"))?, json, true),
        _ => Err(usage("unknown command")),
    }
}

fn usage(what: &str) -> Error {
    Error::Config(format!("{what} (see snapflow --help)"))
}

fn path(p: Option<String>) -> Result<PathBuf> {
    let p = PathBuf::from(p.ok_or_else(|| usage("a directory is needed"))?);
    if !p.is_dir() {
        return Err(Error::Config(format!("{} is not a directory", p.display())));
    }
    Ok(p)
}

fn id(s: Option<String>) -> Result<Option<CheckpointId>> {
    s.map(|s| {
        s.parse()
            .map(CheckpointId)
            .map_err(|_| usage(&format!("{s:?} is not a checkpoint id")))
    })
    .transpose()
}

/// Where the checkpoint commands look: a local directory, or an object store named by a URL
/// (`s3://bucket/prefix/job`, `file:///path/job`, ...: with the `object-store` feature;
/// credentials and endpoint from the `AWS_*` environment variables, as the AWS tools read
/// them).
enum Place {
    Dir(PathBuf),
    #[cfg(feature = "object-store")]
    Store {
        url: String,
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Dir(d) => write!(f, "{}", d.display()),
            #[cfg(feature = "object-store")]
            Place::Store { url, .. } => f.write_str(url),
        }
    }
}

fn place(p: Option<String>) -> Result<Place> {
    let p = p.ok_or_else(|| usage("a directory is needed"))?;
    if p.contains("://") {
        return store_place(&p);
    }
    path(Some(p)).map(Place::Dir)
}

#[cfg(not(feature = "object-store"))]
fn store_place(url: &str) -> Result<Place> {
    Err(Error::Config(format!(
        "{url}: object store URLs need a snapflow built with --features object-store (s3 for S3)"
    )))
}

#[cfg(feature = "object-store")]
fn store_place(url: &str) -> Result<Place> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("{url} is not a URL: {e}")))?;
    let env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
    let (store, path) = object_store::parse_url_opts(&parsed, env)
        .map_err(|e| Error::Config(format!("{url}: {e}")))?;
    Ok(Place::Store {
        url: url.to_string(),
        store: std::sync::Arc::from(store),
        path,
    })
}

/// A job's checkpoints read-only in spirit: the storage creates nothing that is not there
/// (the directory exists), and the tool calls no writing method.
fn job_storage(place: &Place) -> Result<Box<dyn CheckpointStorage>> {
    match place {
        Place::Dir(dir) => Ok(Box::new(job_dir_storage(dir)?)),
        #[cfg(feature = "object-store")]
        Place::Store { store, path, url } => {
            let mut parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
            let job = parts
                .pop()
                .ok_or_else(|| Error::Config(format!("{url} names no job (no path)")))?;
            Ok(Box::new(ObjectStoreCheckpointStorage::new(
                std::sync::Arc::clone(store),
                &parts.join("/"),
                &job,
            )?))
        }
    }
}

/// A storage that reads checkpoints by location at `place`.
fn reader(place: &Place) -> Result<Box<dyn CheckpointStorage>> {
    match place {
        Place::Dir(_) => Ok(Box::new(LocalCheckpointStorage::reader())),
        #[cfg(feature = "object-store")]
        Place::Store { store, .. } => Ok(Box::new(ObjectStoreCheckpointStorage::reader(
            std::sync::Arc::clone(store),
        )?)),
    }
}

fn job_dir_storage(dir: &Path) -> Result<LocalCheckpointStorage> {
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::Config(format!("cannot resolve {}: {e}", dir.display())))?;
    let (Some(root), Some(job)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        return Err(Error::Config(format!(
            "{} names no job directory",
            dir.display()
        )));
    };
    LocalCheckpointStorage::new(root, job)
}

/// The checkpoint to look at: `place` itself when it holds a manifest, else checkpoint `id`
/// (or the newest that verifies) of the job at `place`; with its location and a storage that
/// reads its files.
type Opened = (CompletedCheckpoint, String, Box<dyn CheckpointStorage>);

fn open_checkpoint(place: &Place, id: Option<CheckpointId>) -> Result<Opened> {
    let reader = reader(place)?;
    let here = match place {
        Place::Dir(dir) => dir
            .join("_manifest")
            .is_file()
            .then(|| dir.display().to_string()),
        #[cfg(feature = "object-store")]
        Place::Store { path, .. } => match reader.verify_location(path.as_ref()) {
            Err(Error::NothingAtLocation { .. }) => None,
            _ => Some(path.to_string()),
        },
    };
    if let Some(location) = here {
        return Ok((reader.verify_location(&location)?, location, reader));
    }
    let storage = job_storage(place)?;
    let c = match id {
        Some(id) => storage.verify(id)?,
        None => storage
            .latest_complete()?
            .ok_or_else(|| Error::Config(format!("no complete checkpoint in {place}")))?,
    };
    let location = c.location.clone();
    Ok((c, location, reader))
}

fn read_snapshot(
    reader: &dyn CheckpointStorage,
    location: &str,
    t: &snapflow::TaskStateEntry,
) -> Result<TaskSnapshot> {
    TaskSnapshot::from_bytes(&reader.read_task_state_at(location, &t.state)?)
}

fn manifest_json(m: &Manifest) -> Value {
    json!({
        "id": m.checkpoint.0,
        "kind": m.kind.to_string(),
        "job": m.job,
        "created_unix_ms": m.created_unix_ms,
        "bytes": m.state_bytes(),
        "parallelism": m.parallelism,
        "input_ended": m.input_ended,
    })
}

fn list(dir: &Place, json: bool) -> Result<bool> {
    let storage = job_storage(dir)?;
    let mut rows = Vec::new();
    for id in storage.completed_ids()? {
        let row = match storage.verify(id) {
            Ok(c) => {
                let mut v = manifest_json(&c.manifest);
                v["verified"] = json!(true);
                v
            }
            Err(e) => json!({"id": id.0, "verified": false, "problem": e.to_string()}),
        };
        rows.push(row);
    }
    if json {
        println!("{}", Value::Array(rows));
        return Ok(true);
    }
    println!(
        "{:>8}  {:<10}  {:>14}  {:>10}  {:<9}  vertices (parallelism)",
        "id", "kind", "created (ms)", "bytes", "verified"
    );
    for r in &rows {
        let vertices = r["parallelism"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}({v})"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| r["problem"].as_str().unwrap_or("").to_string());
        println!(
            "{:>8}  {:<10}  {:>14}  {:>10}  {:<9}  {vertices}",
            r["id"],
            r["kind"].as_str().unwrap_or("?"),
            r["created_unix_ms"],
            r["bytes"],
            if r["verified"] == json!(true) {
                "yes"
            } else {
                "NO"
            },
        );
    }
    Ok(true)
}

/// A problem of one file: (file, byte offset if known, what).
fn problem(file: String, offset: Option<u64>, what: String) -> Value {
    json!({"file": file, "offset": offset, "problem": what})
}

fn verify(dir: &Place, json: bool) -> Result<bool> {
    let storage = job_storage(dir)?;
    let mut problems = Vec::new();
    let ids = storage.completed_ids()?;
    for &id in &ids {
        let location = storage.location(id);
        let manifest = match storage.read_manifest(id) {
            Ok(m) => m,
            Err(e) => {
                problems.push(problem(
                    format!("{location}/_manifest"),
                    Some(0),
                    e.to_string(),
                ));
                continue;
            }
        };
        for t in &manifest.tasks {
            let file = format!("{location}/{}", t.state.file);
            match storage.read_task_state(id, &t.state) {
                Ok(bytes) => {
                    // Deeper: each key group blob's checksum.
                    if let Err(e) = TaskSnapshot::from_bytes(&bytes)
                        .and_then(|s| s.keyed.map(|k| k.summaries()).transpose())
                    {
                        problems.push(problem(file, None, e.to_string()));
                    }
                }
                Err(e) => {
                    let offset = if e.to_string().contains("checksum") {
                        20
                    } else {
                        0
                    };
                    problems.push(problem(file, Some(offset), e.to_string()));
                }
            }
        }
    }
    if json {
        println!(
            "{}",
            json!({"checkpoints": ids.len(), "problems": problems})
        );
    } else {
        for p in &problems {
            let at = p["offset"]
                .as_u64()
                .map(|o| format!(" at offset {o}"))
                .unwrap_or_default();
            println!(
                "{}{at}: {}",
                p["file"].as_str().unwrap_or("?"),
                p["problem"].as_str().unwrap_or("?")
            );
        }
        println!("{} checkpoints, {} problems", ids.len(), problems.len());
    }
    Ok(problems.is_empty())
}

fn inspect(dir: &Place, id: Option<CheckpointId>, json: bool) -> Result<bool> {
    let (c, location, reader) = open_checkpoint(dir, id)?;
    let mut tasks = Vec::new();
    for t in &c.manifest.tasks {
        let snap = read_snapshot(reader.as_ref(), &location, t)?;
        let mut states = Vec::new();
        if let Some(k) = &snap.keyed {
            for s in k.summaries()? {
                states.push(
                    json!({"name": s.name, "kind": s.kind, "entries": s.entries, "bytes": s.bytes}),
                );
            }
        }
        for l in &snap.operator.lists {
            let bytes: usize = l.items.iter().map(|i| i.len()).sum();
            states.push(json!({"name": l.name, "kind": format!("OperatorList({:?})", l.mode), "entries": l.items.len(), "bytes": bytes}));
        }
        for b in &snap.operator.broadcast {
            let bytes: usize = b.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            states.push(json!({"name": b.name, "kind": "Broadcast", "entries": b.entries.len(), "bytes": bytes}));
        }
        tasks.push(json!({
            "vertex": t.task.vertex,
            "task": t.task.index,
            "key_groups": t.key_groups.map(|r| format!("{r}")),
            "bytes": t.state.size,
            "states": states,
        }));
    }
    if json {
        let mut v = manifest_json(&c.manifest);
        v["tasks"] = Value::Array(tasks);
        println!("{v}");
        return Ok(true);
    }
    let m = &c.manifest;
    println!(
        "{} {} of job {:?}: {} bytes, max parallelism {}",
        m.kind,
        m.checkpoint,
        m.job,
        m.state_bytes(),
        m.max_parallelism
    );
    for t in &tasks {
        println!(
            "  {}[{}]  key groups {}  {} bytes",
            t["vertex"].as_str().unwrap_or("?"),
            t["task"],
            t["key_groups"].as_str().unwrap_or("-"),
            t["bytes"]
        );
        for s in t["states"].as_array().into_iter().flatten() {
            println!(
                "      {:<32} {:<22} {:>10} entries {:>12} bytes",
                s["name"].as_str().unwrap_or("?"),
                s["kind"].as_str().unwrap_or("?"),
                s["entries"],
                s["bytes"]
            );
        }
    }
    Ok(true)
}

fn dump(
    dir: &Place,
    id: Option<CheckpointId>,
    vertex: &str,
    state: &str,
    key: Option<&str>,
) -> Result<bool> {
    let (c, location, reader) = open_checkpoint(dir, id)?;
    let tasks: Vec<_> = c
        .manifest
        .tasks
        .iter()
        .filter(|t| t.task.vertex == vertex)
        .collect();
    if tasks.is_empty() {
        return Err(Error::Config(format!(
            "no vertex {vertex:?} in checkpoint {} (it has {})",
            c.manifest.checkpoint,
            c.manifest
                .parallelism
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut found = false;
    for t in tasks {
        let Some(keyed) = read_snapshot(reader.as_ref(), &location, t)?.keyed else {
            continue;
        };
        found |= keyed.summaries()?.iter().any(|s| s.name == state);
        for (k, v) in keyed.entries(state)? {
            if key.is_some_and(|want| k.to_string() != want) {
                continue;
            }
            println!("{}", json!({"key": to_json(&k), "value": to_json(&v)}));
        }
    }
    if !found {
        return Err(Error::Config(format!(
            "vertex {vertex:?} has no keyed state {state:?} in checkpoint {}",
            c.manifest.checkpoint
        )));
    }
    Ok(true)
}

fn to_json(d: &Dynamic) -> Value {
    serde_json::to_value(d).unwrap_or_else(|_| Value::String(d.to_string()))
}

fn log(dir: &Path, json: bool, verify: bool) -> Result<bool> {
    let info: LogInfo = inspect_log(dir)?;
    let corrupt = info.problems.iter().filter(|p| !p.recoverable).count();
    if json {
        let parts: Vec<Value> = info
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.id.0,
                    "start": p.start(),
                    "end": p.end(),
                    "segments": p.segments.len(),
                    "records": p.segments.iter().map(|s| s.records).sum::<u64>(),
                    "bytes": p.segments.iter().map(|s| s.bytes).sum::<u64>(),
                })
            })
            .collect();
        let problems: Vec<Value> = info
            .problems
            .iter()
            .map(|p| json!({"file": p.file.display().to_string(), "offset": p.position, "problem": p.reason, "recoverable": p.recoverable}))
            .collect();
        println!("{}", json!({"partitions": parts, "problems": problems}));
    } else {
        if !verify {
            for p in &info.partitions {
                println!(
                    "partition {}: offsets [{}, {}), {} segments, {} bytes",
                    p.id.0,
                    p.start().unwrap_or(0),
                    p.end().unwrap_or(0),
                    p.segments.len(),
                    p.segments.iter().map(|s| s.bytes).sum::<u64>()
                );
            }
        }
        for p in &info.problems {
            let kind = if p.recoverable {
                "torn tail (recoverable)"
            } else {
                "corrupt"
            };
            println!(
                "{} at offset {}: {kind}: {}",
                p.file.display(),
                p.position,
                p.reason
            );
        }
        if verify {
            println!(
                "{} partitions, {} problems ({corrupt} corrupt)",
                info.partitions.len(),
                info.problems.len()
            );
        }
    }
    Ok(!verify || corrupt == 0)
}
