//! QEMU's job state machine (`JobSTT`) and the table of which command
//! verbs a job accepts in which state (`JobVerbTable`), with the words
//! QAPI uses for both.

use schema::create::JobStatus;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::trace::JOB_APPLY_VERB;

/// A command a user may send to a job (QEMU's `JobVerb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Cancel,
    Pause,
    Resume,
    SetSpeed,
    Complete,
    Finalize,
    Dismiss,
    Change,
}

impl Verb {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::SetSpeed => "set-speed",
            Verb::Complete => "complete",
            Verb::Finalize => "finalize",
            Verb::Dismiss => "dismiss",
            Verb::Change => "change",
        }
    }

    /// QEMU 10's `JobVerbTable`.
    pub(crate) fn allowed_in(self, status: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            Verb::Cancel => matches!(
                status,
                Created | Running | Paused | Ready | Standby | Waiting | Pending
            ),
            Verb::Pause | Verb::Resume | Verb::SetSpeed | Verb::Change => {
                matches!(status, Created | Running | Paused | Ready | Standby)
            }
            Verb::Complete => matches!(status, Ready | Standby),
            Verb::Finalize => status == Pending,
            Verb::Dismiss => status == Concluded,
        }
    }

    /// QEMU's `job_apply_verb_locked`: the error for a job `id` in
    /// `status` that does not accept this verb.
    pub(crate) fn check(self, id: &str, status: JobStatus) -> BlockResult<()> {
        schema::trace!(
            JOB_APPLY_VERB,
            "job {id} in state {}; applying verb {} ({})",
            status_name(status),
            self.name(),
            if self.allowed_in(status) {
                "allowed"
            } else {
                "prohibited"
            }
        );
        if self.allowed_in(status) {
            return Ok(());
        }
        Err(generic(format!(
            "Job '{id}' in state '{}' cannot accept command verb '{}'",
            status_name(status),
            self.name()
        )))
    }
}

/// QEMU's `JobSTT`: the changes of status the state machine allows.
pub(crate) fn may_transition(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    match from {
        Undefined => to == Created,
        Created => matches!(to, Running | Aborting | Null),
        Running => matches!(to, Paused | Ready | Waiting | Aborting),
        Paused => to == Running,
        Ready => matches!(to, Standby | Waiting | Aborting),
        Standby => to == Ready,
        Waiting => matches!(to, Pending | Aborting),
        Pending => matches!(to, Aborting | Concluded),
        Aborting => matches!(to, Aborting | Concluded),
        Concluded => to == Null,
        Null => false,
    }
}

/// QEMU's `job_is_ready`: `ready` or `standby`.
pub(crate) fn is_ready(status: JobStatus) -> bool {
    matches!(status, JobStatus::Ready | JobStatus::Standby)
}

/// QEMU's `job_is_completed`: the body has ended.
pub(crate) fn is_completed(status: JobStatus) -> bool {
    use JobStatus::*;
    matches!(status, Waiting | Pending | Aborting | Concluded | Null)
}

/// A status as QAPI spells it (`running`, `concluded`, ...).
pub(crate) fn status_name(status: JobStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub(crate) fn is_well_formed_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

pub(crate) fn generic(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_is_qemus() {
        use JobStatus::*;
        let path = [
            Undefined, Created, Running, Waiting, Pending, Concluded, Null,
        ];
        assert!(path.windows(2).all(|w| may_transition(w[0], w[1])));
        assert!(may_transition(Running, Aborting));
        assert!(may_transition(Ready, Standby) && may_transition(Standby, Ready));
        assert!(!may_transition(Running, Concluded));
        assert!(!may_transition(Concluded, Running));
        assert!(!may_transition(Null, Created));
    }

    #[test]
    fn verbs_are_checked_with_qemus_words() {
        assert!(Verb::Complete.check("m", JobStatus::Ready).is_ok());
        assert_eq!(
            Verb::Complete
                .check("m0", JobStatus::Running)
                .unwrap_err()
                .message,
            "Job 'm0' in state 'running' cannot accept command verb 'complete'"
        );
        assert!(!Verb::Cancel.allowed_in(JobStatus::Aborting));
        assert!(Verb::Finalize.allowed_in(JobStatus::Pending));
        assert!(!Verb::SetSpeed.allowed_in(JobStatus::Waiting));
    }
}
