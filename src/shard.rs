//! Which share of the work one of several processes does: shard `I/N`
//! computes every stage's chunks `c` with `c % N == I`, so N processes on
//! as many machines (a Slurm array, a Kubernetes Indexed Job) split an
//! extraction without talking to each other, only to the shared cache.

use std::fmt;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 {
            return Err("the shard count must be 1 or more".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether chunk `chunk` of a stage is this shard's to compute
    /// (round-robin: every shard gets a share of both splits).
    pub fn owns(&self, chunk: usize) -> bool {
        chunk % self.count == self.index
    }

    /// The shard the scheduler's environment names, and which variables
    /// named it: `RUNNER_SHARD=I/N`; Slurm's `SLURM_ARRAY_TASK_ID` with
    /// `SLURM_ARRAY_TASK_COUNT` (offset by `SLURM_ARRAY_TASK_MIN` and
    /// divided by `SLURM_ARRAY_TASK_STEP`, so `--array=1-8` or `0-30:10`
    /// number shards from 0); Kubernetes' `JOB_COMPLETION_INDEX` with
    /// `RUNNER_SHARD_COUNT` (the Job's `completions`, which Kubernetes does
    /// not pass to the pod). `Ok(None)`: none is set.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<(Shard, &'static str)>, String> {
        let number = |var: &str| -> Result<Option<usize>, String> {
            env(var)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("{var}={v} is not a whole number"))
                })
                .transpose()
        };
        if let Some(v) = env("RUNNER_SHARD") {
            let shard = v
                .parse::<Shard>()
                .map_err(|e| format!("RUNNER_SHARD={v}: {e}"))?;
            return Ok(Some((shard, "RUNNER_SHARD")));
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: pass --shard I/N",
            )?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let index = id.checked_sub(min).ok_or(format!(
                "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
            ))? / step;
            let shard = Shard::new(index, count).map_err(|e| format!("Slurm array: {e}"))?;
            return Ok(Some((shard, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")));
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = number("RUNNER_SHARD_COUNT")?.ok_or(
                "JOB_COMPLETION_INDEX is set but RUNNER_SHARD_COUNT is not: set it to the Job's completions (deploy/kubernetes does)",
            )?;
            let shard = Shard::new(index, count).map_err(|e| format!("Indexed Job: {e}"))?;
            return Ok(Some((shard, "JOB_COMPLETION_INDEX/RUNNER_SHARD_COUNT")));
        }
        Ok(None)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`: shard I (0-based) of N.
    fn from_str(s: &str) -> Result<Shard, String> {
        let (index, count) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not I/N (for example 0/4: the first of four)"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}` is not I/N with whole numbers"))
        };
        Shard::new(parse(index)?, parse(count)?)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shards_split_the_chunks_round_robin_without_overlap() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        for chunk in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.owns(chunk)).count(), 1);
        }
        assert_eq!("2/3".parse::<Shard>(), Ok(shards[2]));
        assert_eq!(shards[2].to_string(), "2/3");
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schedulers_variables_name_the_shard() {
        let from = |vars: &[(&str, &str)]| Shard::from_env(env(vars)).map(|s| s.map(|s| s.0));
        assert_eq!(from(&[]), Ok(None));
        assert_eq!(
            from(&[("RUNNER_SHARD", "1/4")]),
            Ok(Some(Shard::new(1, 4).unwrap()))
        );
        // sbatch --array=1-4: ids 1..4 are shards 0..3.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ];
        assert_eq!(from(&slurm), Ok(Some(Shard::new(2, 4).unwrap())));
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "20"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_STEP", "10"),
        ];
        assert_eq!(from(&stepped), Ok(Some(Shard::new(2, 4).unwrap())));
        let k8s = [("JOB_COMPLETION_INDEX", "0"), ("RUNNER_SHARD_COUNT", "2")];
        assert_eq!(from(&k8s), Ok(Some(Shard::new(0, 2).unwrap())));
        let err = from(&[("JOB_COMPLETION_INDEX", "0")]).unwrap_err();
        assert!(err.contains("RUNNER_SHARD_COUNT"), "{err}");
        let err = from(&[("SLURM_ARRAY_TASK_ID", "x")]).unwrap_err();
        assert!(err.contains("SLURM_ARRAY_TASK_ID=x"), "{err}");
    }
}
