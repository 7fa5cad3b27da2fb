//! The order of a local pipeline's jobs, as GitLab's pipeline processing decides it
//! (docs/exec.md, "Order"): a job without `needs` waits for every job of the earlier stages, a
//! job with `needs` for those jobs only; `when` decides whether it runs once they are done;
//! `allow_failure` jobs never fail what follows; one job of a `resource_group` at a time.
//!
//! Pure: the caller starts the jobs this returns and reports their ends.

/// `when` of a job, as the pipeline uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWhen {
    OnSuccess,
    OnFailure,
    Always,
    /// Not run unless asked for by name; shown as `manual`.
    Manual,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Success,
    Failed,
    Skipped,
    Manual,
    Canceled,
}

impl Status {
    fn done(self) -> bool {
        !matches!(self, Status::Created | Status::Running)
    }
}

/// What the scheduler knows of a job.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Index of its stage in `stages`.
    pub stage: usize,
    pub when: JobWhen,
    pub allow_failure: bool,
    /// Indices of the jobs it needs; `None`: the jobs of every earlier stage.
    pub needs: Option<Vec<usize>>,
    pub resource_group: Option<String>,
}

/// The pipeline's state: one status per node.
pub struct Schedule {
    nodes: Vec<Node>,
    status: Vec<Status>,
    /// Why a job was skipped (shown in the summary).
    reasons: Vec<Option<String>>,
    canceled: bool,
}

impl Schedule {
    pub fn new(nodes: Vec<Node>) -> Schedule {
        let n = nodes.len();
        Schedule {
            nodes,
            status: vec![Status::Created; n],
            reasons: vec![None; n],
            canceled: false,
        }
    }

    pub fn status(&self, i: usize) -> Status {
        self.status[i]
    }

    pub fn reason(&self, i: usize) -> Option<&str> {
        self.reasons[i].as_deref()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn predecessors(&self, i: usize) -> Vec<usize> {
        match &self.nodes[i].needs {
            Some(needs) => needs.clone(),
            None => (0..self.nodes.len())
                .filter(|&j| self.nodes[j].stage < self.nodes[i].stage)
                .collect(),
        }
    }

    /// Records a job's end.
    pub fn finished(&mut self, i: usize, status: Status) {
        self.status[i] = status;
    }

    /// The job failed with an exit code its `allow_failure: exit_codes` allows.
    pub fn allow_failure(&mut self, i: usize) {
        self.nodes[i].allow_failure = true;
    }

    /// Ctrl-C: nothing more starts; what has not started is canceled.
    pub fn cancel(&mut self) {
        self.canceled = true;
        for s in &mut self.status {
            if *s == Status::Created {
                *s = Status::Canceled;
            }
        }
    }

    /// Settles every job that can be decided now (skipped, manual) and returns those that may
    /// start, at most `free` of them, marked running.
    pub fn next(&mut self, free: usize) -> Vec<usize> {
        let mut start = Vec::new();
        loop {
            let mut changed = false;
            for i in 0..self.nodes.len() {
                if self.status[i] != Status::Created {
                    continue;
                }
                let preds = self.predecessors(i);
                if preds.iter().any(|&p| !self.status[p].done()) {
                    continue;
                }
                // A failure that counts: a failed job that may not fail, or a canceled one.
                let failed = preds.iter().any(|&p| {
                    matches!(self.status[p], Status::Failed | Status::Canceled)
                        && !self.nodes[p].allow_failure
                });
                // A manual job that may not fail blocks what comes after it, as on GitLab (the
                // pipeline waits for someone to play it).
                let blocking = preds
                    .iter()
                    .find(|&&p| self.status[p] == Status::Manual && !self.nodes[p].allow_failure);
                // GitLab's DAG rule: a job whose needs include a skipped job (or a manual job
                // that may fail, which is ignored) is skipped unless it runs `always`.
                let dag_skipped = self.nodes[i].needs.is_some()
                    && preds.iter().any(|&p| {
                        self.status[p] == Status::Skipped
                            || (self.status[p] == Status::Manual && self.nodes[p].allow_failure)
                    });
                let node = &self.nodes[i];
                let decision = match node.when {
                    JobWhen::Manual => Some((Status::Manual, None)),
                    _ if blocking.is_some() => Some((
                        Status::Skipped,
                        blocking
                            .map(|&p| format!("waits for the manual job {}", self.nodes[p].name)),
                    )),
                    JobWhen::OnSuccess if failed => {
                        Some((Status::Skipped, Some("an earlier job failed".to_string())))
                    }
                    JobWhen::OnFailure if !failed => Some((
                        Status::Skipped,
                        Some("when: on_failure and no earlier job failed".to_string()),
                    )),
                    JobWhen::OnSuccess | JobWhen::OnFailure if dag_skipped => Some((
                        Status::Skipped,
                        Some("a job it needs was skipped".to_string()),
                    )),
                    _ => None,
                };
                if let Some((status, reason)) = decision {
                    self.status[i] = status;
                    self.reasons[i] = reason;
                    changed = true;
                    continue;
                }
                if start.len() >= free {
                    continue;
                }
                if let Some(group) = &node.resource_group {
                    let busy = (0..self.nodes.len()).any(|j| {
                        self.status[j] == Status::Running
                            && self.nodes[j].resource_group.as_ref() == Some(group)
                    });
                    if busy {
                        continue;
                    }
                }
                self.status[i] = Status::Running;
                start.push(i);
                changed = true;
            }
            if !changed {
                return start;
            }
        }
    }

    /// Whether every job has ended.
    pub fn done(&self) -> bool {
        self.status.iter().all(|s| s.done())
    }

    /// The pipeline's status: `failed` when a job failed that may not, `canceled` after Ctrl-C,
    /// `manual` when a manual job that may not fail holds the rest back (GitLab's `blocked`),
    /// otherwise `success`.
    pub fn pipeline_status(&self) -> Status {
        let failed = (0..self.nodes.len())
            .any(|i| self.status[i] == Status::Failed && !self.nodes[i].allow_failure);
        let blocked = (0..self.nodes.len())
            .any(|i| self.status[i] == Status::Manual && !self.nodes[i].allow_failure);
        if failed {
            Status::Failed
        } else if self.canceled {
            Status::Canceled
        } else if blocked {
            Status::Manual
        } else {
            Status::Success
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_blocking_manual_job_holds_later_stages_and_skipped_needs_skip_dag_jobs() {
        let mut gate = node("approve", 0);
        gate.when = JobWhen::Manual; // allow_failure false: blocking
        let mut skipped = node("on-fail", 0);
        skipped.when = JobWhen::OnFailure;
        let mut dag = node("dag", 1);
        dag.needs = Some(vec![1]);
        let mut always = node("always", 1);
        always.needs = Some(vec![1]);
        always.when = JobWhen::Always;
        let mut s = Schedule::new(vec![gate, skipped, dag, always, node("deploy", 2)]);
        assert_eq!(start(&mut s, 8), ["always"]);
        assert_eq!(s.status(1), Status::Skipped);
        assert_eq!(s.status(2), Status::Skipped);
        assert_eq!(s.reason(2), Some("a job it needs was skipped"));
        s.finished(3, Status::Success);
        assert!(s.next(8).is_empty());
        assert_eq!(s.status(4), Status::Skipped);
        assert_eq!(s.reason(4), Some("waits for the manual job approve"));
        assert!(s.done());
        assert_eq!(s.pipeline_status(), Status::Manual);
    }

    use super::*;

    fn node(name: &str, stage: usize) -> Node {
        Node {
            name: name.into(),
            stage,
            when: JobWhen::OnSuccess,
            allow_failure: false,
            needs: None,
            resource_group: None,
        }
    }

    /// The names of the jobs `next(free)` starts.
    fn start(s: &mut Schedule, free: usize) -> Vec<String> {
        let idx = s.next(free);
        idx.iter().map(|&i| s.nodes()[i].name.clone()).collect()
    }

    #[test]
    fn stages_run_in_order_and_a_failure_skips_on_success_jobs_but_runs_on_failure_ones() {
        let mut cleanup = node("cleanup", 2);
        cleanup.when = JobWhen::OnFailure;
        let mut s = Schedule::new(vec![
            node("build", 0),
            node("lint", 0),
            node("test", 1),
            node("deploy", 2),
            cleanup,
        ]);
        assert_eq!(start(&mut s, 8), ["build", "lint"]);
        assert!(s.next(8).is_empty());
        s.finished(0, Status::Success);
        assert!(s.next(8).is_empty(), "test waits for the whole first stage");
        s.finished(1, Status::Success);
        assert_eq!(start(&mut s, 8), ["test"]);
        s.finished(2, Status::Failed);
        assert_eq!(start(&mut s, 8), ["cleanup"]);
        assert_eq!(s.status(3), Status::Skipped);
        assert_eq!(s.reason(3), Some("an earlier job failed"));
        s.finished(4, Status::Success);
        assert!(s.done());
        assert_eq!(s.pipeline_status(), Status::Failed);
    }

    #[test]
    fn needs_start_a_job_before_its_stage_and_allow_failure_does_not_fail_the_pipeline() {
        let mut flaky = node("flaky", 0);
        flaky.allow_failure = true;
        let mut fast = node("fast-test", 1);
        fast.needs = Some(vec![0]);
        let mut on_failure = node("report", 2);
        on_failure.when = JobWhen::OnFailure;
        let mut s = Schedule::new(vec![
            node("build", 0),
            fast,
            node("slow-test", 1),
            flaky,
            on_failure,
        ]);
        assert_eq!(start(&mut s, 8), ["build", "flaky"]);
        s.finished(0, Status::Success);
        assert_eq!(start(&mut s, 8), ["fast-test"]);
        s.finished(3, Status::Failed);
        assert_eq!(start(&mut s, 8), ["slow-test"]);
        s.finished(1, Status::Success);
        s.finished(2, Status::Success);
        assert!(s.next(8).is_empty());
        assert_eq!(
            s.status(4),
            Status::Skipped,
            "an allowed failure is no failure"
        );
        assert_eq!(s.pipeline_status(), Status::Success);
    }

    #[test]
    fn concurrency_resource_groups_manual_jobs_and_cancel() {
        let mut a = node("deploy-a", 0);
        a.resource_group = Some("prod".into());
        let mut b = node("deploy-b", 0);
        b.resource_group = Some("prod".into());
        let mut manual = node("release", 0);
        manual.when = JobWhen::Manual;
        manual.allow_failure = true;
        let mut after = node("after-release", 1);
        after.needs = Some(vec![2]);
        let mut s = Schedule::new(vec![a, b, manual, after, node("x", 0), node("last", 1)]);
        assert_eq!(start(&mut s, 1), ["deploy-a"]);
        assert_eq!(s.status(2), Status::Manual);
        assert_eq!(s.status(3), Status::Skipped);
        assert_eq!(s.reason(3), Some("a job it needs was skipped"));
        assert_eq!(start(&mut s, 2), ["x"], "deploy-b waits for its group");
        s.finished(0, Status::Success);
        assert_eq!(start(&mut s, 2), ["deploy-b"]);
        s.cancel();
        assert_eq!(s.status(5), Status::Canceled);
        s.finished(1, Status::Canceled);
        s.finished(4, Status::Success);
        assert!(s.done());
        assert_eq!(s.pipeline_status(), Status::Canceled);
    }
}
