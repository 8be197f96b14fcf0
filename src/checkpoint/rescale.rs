//! [`rescale_savepoint`]: rewrites a savepoint (or checkpoint) directory with one vertex at
//! another parallelism, offline, for the `snapflow savepoint rescale` command. Keyed state
//! moves by key group to the new tasks' ranges; operator state is redistributed as a restore
//! would ([`redistribute`]); every other task's state is copied as it is. The source is read
//! and verified first; the destination is a new directory, written file by file through the
//! storage layer, manifest last.

use std::path::Path;

use super::local::LocalCheckpointStorage;
use super::{
    encode_manifest, state_handle, CheckpointKind, CheckpointStorage, Manifest, TaskId,
    TaskStateEntry, STATE_MAGIC,
};
use crate::error::{Error, Result};
use crate::state::{redistribute, KeyGroupRange, KeyedSnapshot, OperatorSnapshot, TaskSnapshot};
use crate::storage::{self, FileSystem, StdFs};

/// Writes to the new directory `dst` the savepoint or checkpoint in directory `src` with
/// vertex `uid` at `parallelism`, and returns the new manifest (a savepoint's). `src` is left
/// as it is. Fails if `dst` already holds a manifest, if `src` does not verify, or if the
/// vertex is not in it.
pub fn rescale_savepoint(src: &Path, dst: &Path, uid: &str, parallelism: u32) -> Result<Manifest> {
    let reader = LocalCheckpointStorage::reader();
    let location = src.display().to_string();
    let old = reader.verify_location(&location)?.manifest;
    let Some(&old_p) = old.parallelism.get(uid) else {
        return Err(Error::Config(format!(
            "vertex {uid:?} is not in the checkpoint at {location} (it has {})",
            old.parallelism
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if parallelism == 0 || parallelism > old.max_parallelism {
        return Err(Error::InvalidParallelism {
            parallelism,
            max_parallelism: old.max_parallelism,
        });
    }
    if StdFs.file_len(&dst.join("_manifest")).is_ok() {
        return Err(Error::Config(format!(
            "{} already holds a checkpoint",
            dst.display()
        )));
    }
    let fs = &StdFs;
    storage::create_dir_durable(fs, dst)?;
    let mut manifest = old.clone();
    manifest.kind = CheckpointKind::Savepoint;
    manifest.tasks.clear();
    let mut snapshots = Vec::new();
    for t in &old.tasks {
        let bytes = reader.read_task_state_at(&location, &t.state)?;
        if t.task.vertex == uid {
            snapshots.push((t.task.index, TaskSnapshot::from_bytes(&bytes)?));
        } else {
            manifest
                .tasks
                .push(write_state(dst, &t.task, t.key_groups, &bytes)?);
        }
    }
    snapshots.sort_by_key(|(i, _)| *i);
    let news = split(
        snapshots.into_iter().map(|(_, s)| s).collect(),
        &old,
        parallelism,
    )?;
    for (index, snap) in news.into_iter().enumerate() {
        let task = TaskId::new(uid, index as u32)?;
        let range = snap.keyed.as_ref().map(|k| k.range);
        manifest
            .tasks
            .push(write_state(dst, &task, range, &snap.to_bytes()?)?);
    }
    manifest.parallelism.insert(uid.to_string(), parallelism);
    for v in manifest.vertices.iter_mut().filter(|v| v.uid == uid) {
        v.parallelism = parallelism;
    }
    for s in manifest.sources.iter_mut().filter(|s| s.task.vertex == uid) {
        // Informational (the offsets a restore uses are in the operator state): where the
        // partition's offset now lives is not tracked per task.
        s.task.index %= parallelism;
    }
    let bytes = encode_manifest(&manifest)?;
    storage::sync_dir(fs, dst)?;
    storage::write_atomic(fs, &dst.join("_manifest"), &bytes)?;
    tracing::info!(src = %location, dst = %dst.display(), vertex = uid, from = old_p, to = parallelism, "savepoint rescaled");
    Ok(manifest)
}

/// The snapshots of the old tasks of one vertex spread over `parallelism` new tasks.
fn split(old: Vec<TaskSnapshot>, m: &Manifest, parallelism: u32) -> Result<Vec<TaskSnapshot>> {
    let operator: Vec<OperatorSnapshot> = old.iter().map(|s| s.operator.clone()).collect();
    let operator = if operator.len() == parallelism as usize {
        operator
    } else {
        redistribute(&operator, parallelism)?
    };
    let keyed = old.iter().any(|s| s.keyed.is_some());
    // Every task wrote the same states' schemas: each state's once.
    let mut schemas = Vec::new();
    for s in old.iter().filter_map(|s| s.keyed.as_ref()) {
        for schema in &s.schemas {
            if !schemas
                .iter()
                .any(|k: &crate::state::StateSchema| k.name == schema.name)
            {
                schemas.push(schema.clone());
            }
        }
    }
    let blobs: Vec<_> = old
        .into_iter()
        .filter_map(|s| s.keyed)
        .flat_map(|k| k.groups)
        .collect();
    operator
        .into_iter()
        .enumerate()
        .map(|(i, operator)| {
            let keyed = if keyed {
                let range = KeyGroupRange::for_task(i as u32, parallelism, m.max_parallelism)?;
                Some(KeyedSnapshot {
                    max_parallelism: m.max_parallelism,
                    range,
                    groups: blobs
                        .iter()
                        .filter(|b| range.contains(b.key_group))
                        .cloned()
                        .collect(),
                    schemas: schemas.clone(),
                })
            } else {
                None
            };
            Ok(TaskSnapshot { keyed, operator })
        })
        .collect()
}

/// Writes one task's state file into `dir` (durable once `dir` is synced).
fn write_state(
    dir: &Path,
    task: &TaskId,
    key_groups: Option<KeyGroupRange>,
    payload: &[u8],
) -> Result<TaskStateEntry> {
    let state = state_handle(task, payload);
    let bytes = storage::encode_envelope(STATE_MAGIC, payload);
    storage::write_renamed(&StdFs, &dir.join(&state.file), &[&bytes])?;
    Ok(TaskStateEntry {
        task: task.clone(),
        state,
        key_groups,
    })
}
