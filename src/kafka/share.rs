//! [`ProcessShare`]: which share of a job one of its processes runs (a leaf: imports only the
//! crate's errors).

use crate::error::{Error, Result};

/// Which share of a job a process runs: process `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessShare {
    index: u32,
    count: u32,
}

impl ProcessShare {
    /// Process `index` of `count` (`index < count`).
    pub fn new(index: u32, count: u32) -> Result<ProcessShare> {
        if count == 0 || index >= count {
            return Err(Error::Config(format!(
                "process {index} of {count}: the index must be below the count, which must be \
                 at least 1"
            )));
        }
        Ok(ProcessShare { index, count })
    }

    /// The whole job in one process.
    pub fn single() -> ProcessShare {
        ProcessShare { index: 0, count: 1 }
    }

    /// From command-line arguments `--process i --of n` (both or neither; neither: `None`).
    pub fn from_args(args: &[String]) -> Result<Option<ProcessShare>> {
        let value = |flag: &str| -> Result<Option<u32>> {
            match args.iter().position(|a| a == flag) {
                None => Ok(None),
                Some(i) => args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .map(Some)
                    .ok_or_else(|| Error::Config(format!("{flag} needs a number"))),
            }
        };
        match (value("--process")?, value("--of")?) {
            (None, None) => Ok(None),
            (Some(i), Some(n)) => ProcessShare::new(i, n).map(Some),
            _ => Err(Error::Config(
                "--process and --of go together: --process i --of n".into(),
            )),
        }
    }

    /// This process's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many processes share the job.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The partitions of a topic of `total` partitions this process reads.
    pub fn partitions(&self, total: u32) -> Vec<u32> {
        (self.index..total).step_by(self.count as usize).collect()
    }

    /// The job name this process runs and checkpoints under: `<job>-<i>of<n>`.
    pub fn job_name(&self, job: &str) -> String {
        format!("{job}-{}of{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_partitions_and_names_and_refuse_bad_arguments() {
        let s = ProcessShare::new(1, 3).expect("share");
        assert_eq!(s.partitions(8), vec![1, 4, 7]);
        assert_eq!(s.job_name("wc"), "wc-1of3");
        assert!(ProcessShare::new(3, 3).is_err());
        assert!(ProcessShare::new(0, 0).is_err());
        let args = |a: &str| a.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            ProcessShare::from_args(&args("x --process 2 --of 4")).expect("parse"),
            Some(ProcessShare::new(2, 4).expect("share"))
        );
        assert_eq!(ProcessShare::from_args(&args("x")).expect("parse"), None);
        assert!(ProcessShare::from_args(&args("x --process 2")).is_err());
        assert!(ProcessShare::from_args(&args("x --process two --of 4")).is_err());
    }
}
