//! The rules of a `blkdebug` node and its state, kept as QEMU's blkdebug
//! keeps them.
//!
//! Every rule waits for an event. When a parent raises the event, the
//! rules for it that apply in the current state (a rule's state 0 is any
//! state) act together: the error rules among them become the active
//! ones, replacing those an earlier event armed, and the state rules pick
//! the next state, all judged against the state before the event. The
//! first rule given wins: the active error rules keep the order they were
//! given in and a request fails by the first that matches it, and of
//! several state rules the first given decides. An active error rule
//! stays armed until another event arms error rules, or, with `once`,
//! until it has failed one request; then it is gone for good.

use std::sync::{Mutex, MutexGuard};

use schema::block::{
    BlkdebugEvent, BlkdebugInjectErrorOptions, BlkdebugIoType, BlkdebugSetStateOptions,
};

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::SECTOR_SIZE;

/// The kinds of request an error rule without `iotype` fails: all but
/// block status, as in QEMU.
const DEFAULT_IOTYPES: u8 = bit(BlkdebugIoType::Read)
    | bit(BlkdebugIoType::Write)
    | bit(BlkdebugIoType::WriteZeroes)
    | bit(BlkdebugIoType::Discard)
    | bit(BlkdebugIoType::Flush);

const fn bit(iotype: BlkdebugIoType) -> u8 {
    1 << iotype as u8
}

/// What an error rule does to the requests it matches.
#[derive(Debug, Clone, Copy)]
struct Failure {
    /// The kinds of request it fails ([`bit`]s).
    iotypes: u8,
    /// The error; 0 lets the request pass (and hides later rules).
    errno: i32,
    /// Only requests covering this byte fail; `None` is any request.
    offset: Option<u64>,
    once: bool,
    immediately: bool,
}

impl Failure {
    fn matches(&self, offset: u64, len: u64, iotype: BlkdebugIoType) -> bool {
        self.iotypes & bit(iotype) != 0
            && self
                .offset
                .is_none_or(|at| len > 0 && at >= offset && at - offset < len)
    }
}

#[derive(Debug)]
enum Action {
    Fail(Failure),
    SetState(i32),
}

#[derive(Debug)]
struct Rule {
    /// Unique among the node's rules.
    id: usize,
    event: BlkdebugEvent,
    /// The state the rule applies in; 0 is any.
    state: i32,
    action: Action,
}

/// The error a request gets from a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Injected {
    pub errno: i32,
    /// Fail at once, rather than after letting other requests run.
    pub immediately: bool,
}

#[derive(Debug)]
struct State {
    /// The current state; 1 when the node opens.
    state: i32,
    /// In the order given: error rules, then state rules.
    rules: Vec<Rule>,
    /// The armed error rules by id, in the order given.
    active: Vec<(usize, Failure)>,
}

/// A node's rules and state.
#[derive(Debug)]
pub(super) struct Rules(Mutex<State>);

/// The C `int` QEMU keeps states and error numbers in takes the low bits.
fn c_int(value: i64) -> i32 {
    value as i32
}

impl Rules {
    /// The rules, error rules first, each list in the order given.
    pub(super) fn new(
        inject: &[BlkdebugInjectErrorOptions],
        set_state: &[BlkdebugSetStateOptions],
    ) -> BlockResult<Rules> {
        let mut rules = Vec::with_capacity(inject.len() + set_state.len());
        for rule in inject {
            let errno = rule.errno.unwrap_or(i64::from(libc::EIO));
            if !(0..=i64::from(i32::MAX)).contains(&errno) {
                return Err(BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "Invalid errno {errno} in an inject-error rule: it must be a positive error number, or 0 to let requests pass"
                    ),
                ));
            }
            let failure = Failure {
                iotypes: rule.iotype.map_or(DEFAULT_IOTYPES, bit),
                errno: c_int(errno),
                offset: match rule.sector.unwrap_or(-1) {
                    -1 => None,
                    sector => Some((sector as u64).wrapping_mul(SECTOR_SIZE)),
                },
                once: rule.once.unwrap_or(false),
                immediately: rule.immediately.unwrap_or(false),
            };
            rules.push((rule.event, rule.state, Action::Fail(failure)));
        }
        for rule in set_state {
            let action = Action::SetState(c_int(rule.new_state));
            rules.push((rule.event, rule.state, action));
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(id, (event, state, action))| Rule {
                id,
                event,
                state: c_int(state.unwrap_or(0)),
                action,
            })
            .collect();
        Ok(Rules(Mutex::new(State {
            state: 1,
            rules,
            active: Vec::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `event` happened: the rules for it act.
    pub(super) fn raise(&self, event: BlkdebugEvent) {
        let mut state = self.state();
        let current = state.state;
        let mut next = current;
        let mut armed = Vec::new();
        // QEMU keeps each event's rules newest first and lets each act in
        // turn: the first given is the last to set the state.
        for rule in state.rules.iter().rev() {
            if rule.event != event || (rule.state != 0 && rule.state != current) {
                continue;
            }
            match rule.action {
                Action::Fail(failure) => armed.push((rule.id, failure)),
                Action::SetState(new_state) => next = new_state,
            }
        }
        if !armed.is_empty() {
            armed.reverse();
            state.active = armed;
        }
        state.state = next;
    }

    /// The error for a request of `iotype` on `[offset, offset + len)`,
    /// if an armed rule fails it; a `once` rule goes as it fires.
    pub(super) fn check(&self, offset: u64, len: u64, iotype: BlkdebugIoType) -> Option<Injected> {
        let mut state = self.state();
        let at = state
            .active
            .iter()
            .position(|(_, failure)| failure.matches(offset, len, iotype))?;
        let (id, failure) = state.active[at];
        if failure.errno == 0 {
            return None;
        }
        if failure.once {
            state.active.remove(at);
            state.rules.retain(|rule| rule.id != id);
        }
        Some(Injected {
            errno: failure.errno,
            immediately: failure.immediately,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlkdebugEvent::{FlushToDisk, None as Opened, ReadAio, WriteAio};
    use BlkdebugIoType::{BlockStatus, Flush, Read, Write};

    fn fail(event: BlkdebugEvent, errno: i64) -> BlkdebugInjectErrorOptions {
        BlkdebugInjectErrorOptions {
            event,
            state: Option::None,
            iotype: Option::None,
            errno: Some(errno),
            sector: Option::None,
            once: Option::None,
            immediately: Option::None,
        }
    }

    fn set(event: BlkdebugEvent, state: i64, new_state: i64) -> BlkdebugSetStateOptions {
        BlkdebugSetStateOptions {
            event,
            state: Some(state),
            new_state,
        }
    }

    fn errno(rules: &Rules, iotype: BlkdebugIoType, offset: u64, len: u64) -> Option<i32> {
        rules.check(offset, len, iotype).map(|i| i.errno)
    }

    #[test]
    fn rules_arm_on_their_event_and_the_first_given_wins() {
        let rules = Rules::new(&[fail(ReadAio, 5), fail(ReadAio, 28)], &[]).unwrap();
        assert_eq!(errno(&rules, Read, 0, 512), Option::None);
        rules.raise(WriteAio);
        assert_eq!(errno(&rules, Read, 0, 512), Option::None);
        rules.raise(ReadAio);
        // Armed, they stay armed, for every kind but block status.
        for _ in 0..2 {
            assert_eq!(errno(&rules, Read, 0, 512), Some(5));
            assert_eq!(errno(&rules, Write, 0, 512), Some(5));
            assert_eq!(errno(&rules, Flush, 0, 0), Some(5));
            assert_eq!(errno(&rules, BlockStatus, 0, 512), Option::None);
        }
    }

    #[test]
    fn once_fails_one_request_and_the_next_rule_takes_over() {
        let mut first = fail(ReadAio, 28);
        first.once = Some(true);
        let rules = Rules::new(&[first, fail(ReadAio, 5)], &[]).unwrap();
        rules.raise(ReadAio);
        assert_eq!(errno(&rules, Read, 0, 512), Some(28));
        assert_eq!(errno(&rules, Read, 0, 512), Some(5));
        // The once rule is gone: the event arms only the other one now.
        rules.raise(ReadAio);
        assert_eq!(errno(&rules, Read, 0, 512), Some(5));
    }

    #[test]
    fn sectors_iotypes_and_errno_zero_select_requests() {
        let mut sector = fail(Opened, 22);
        sector.sector = Some(8);
        let mut flush = fail(Opened, 1);
        flush.iotype = Some(Flush);
        let mut pass = fail(Opened, 0);
        pass.iotype = Some(Write);
        let rules = Rules::new(&[sector, pass, flush, fail(Opened, 5)], &[]).unwrap();
        rules.raise(Opened);
        // Byte 4096 is sector 8.
        assert_eq!(errno(&rules, Read, 4096, 1), Some(22));
        assert_eq!(errno(&rules, Read, 0, 4097), Some(22));
        assert_eq!(errno(&rules, Read, 0, 4096), Some(5));
        assert_eq!(errno(&rules, Read, 4097, 512), Some(5));
        // A sector rule never matches a flush (no range); errno 0 lets
        // writes pass without reaching the rules after it.
        assert_eq!(errno(&rules, Flush, 0, 0), Some(1));
        assert_eq!(errno(&rules, Write, 0, 512), Option::None);
    }

    #[test]
    fn states_decide_which_rules_act_and_change_after_the_event() {
        let mut in_two = fail(WriteAio, 28);
        in_two.state = Some(2);
        let rules = Rules::new(
            &[in_two],
            // In state 1 a write moves to 2 (the first of the two given
            // wins); in 2 it moves to 3.
            &[
                set(WriteAio, 1, 2),
                set(WriteAio, 1, 7),
                set(WriteAio, 2, 3),
            ],
        )
        .unwrap();
        // State 1 -> 2: the error rule was not for state 1.
        rules.raise(WriteAio);
        assert_eq!(errno(&rules, Write, 0, 512), Option::None);
        // State 2 -> 3: it arms, judged by the state before the event.
        rules.raise(WriteAio);
        assert_eq!(errno(&rules, Write, 0, 512), Some(28));
        // State 3: nothing acts, what is armed stays armed.
        rules.raise(WriteAio);
        assert_eq!(errno(&rules, Write, 0, 512), Some(28));
        assert_eq!(rules.state().state, 3);
    }

    #[test]
    fn a_later_event_replaces_the_armed_rules() {
        let rules = Rules::new(&[fail(ReadAio, 5), fail(FlushToDisk, 28)], &[]).unwrap();
        rules.raise(ReadAio);
        rules.raise(FlushToDisk);
        assert_eq!(errno(&rules, Read, 0, 512), Some(28));
    }

    #[test]
    fn negative_errnos_are_refused() {
        let error = Rules::new(&[fail(ReadAio, -5)], &[]).unwrap_err();
        assert!(error.message.contains("errno -5"), "{error}");
    }
}
