//! The expected-reply queue: what each client message still awaits from the server.
//!
//! Every message the relay forwards that the server answers pushes one [`Pending`]; replies
//! pop them in order, so each `CommandComplete` is matched to the statement that produced it.
//! After an `ErrorResponse` in the extended protocol the server skips everything up to `Sync`;
//! [`Replies::on_error`] drops those entries the same way.

use std::collections::VecDeque;

use crate::protocol::backend as be;

/// What one forwarded message still awaits.
#[derive(Debug)]
pub enum Pending<G> {
    /// A simple `Query` (or `FunctionCall`): everything up to `ReadyForQuery`.
    Simple(G),
    Parse(G),
    Bind(G),
    Close(G),
    /// `Describe` of a statement: `ParameterDescription`, then `RowDescription` or `NoData`.
    DescribeStatement(G),
    /// `Describe` of a portal: `RowDescription` or `NoData`.
    DescribePortal(G),
    /// `Execute`: rows, then `CommandComplete`, `EmptyQueryResponse` or `PortalSuspended`.
    Execute(G),
    /// `Sync`: `ReadyForQuery`.
    Sync(G),
}

impl<G> Pending<G> {
    /// What the guard attached.
    pub fn guard(&self) -> Option<&G> {
        match self {
            Pending::Simple(g)
            | Pending::Parse(g)
            | Pending::Bind(g)
            | Pending::Close(g)
            | Pending::DescribeStatement(g)
            | Pending::DescribePortal(g)
            | Pending::Execute(g)
            | Pending::Sync(g) => Some(g),
        }
    }

    fn is_sync_point(&self) -> bool {
        matches!(self, Pending::Sync(_) | Pending::Simple(_))
    }
}

/// The queue of pending replies. `G` is what the guard attaches to a statement.
#[derive(Debug)]
pub struct Replies<G> {
    queue: VecDeque<Pending<G>>,
    /// Entries taken off the front since the session began: the number of the front entry.
    popped: u64,
    /// Sync points (`Sync`, simple `Query`) pushed since the session began.
    sync_points: u64,
}

impl<G> Default for Replies<G> {
    fn default() -> Self {
        Replies {
            queue: VecDeque::with_capacity(16),
            popped: 0,
            sync_points: 0,
        }
    }
}

/// How a server message relates to the queue.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Step {
    /// The message belongs to the front entry, which stays.
    Within,
    /// The message completes the front entry, which was popped.
    Completes,
    /// The message is asynchronous or unexpected; the queue is unchanged.
    Unrelated,
}

impl<G> Replies<G> {
    pub fn push(&mut self, p: Pending<G>) {
        self.sync_points += u64::from(p.is_sync_point());
        self.queue.push_back(p);
    }

    /// How many sync points (`Sync`, simple `Query`) were pushed since the session began: a
    /// message pushed when this was lower is in an earlier batch than one pushed now (an
    /// error in it does not make the server skip the later one).
    pub fn sync_points(&self) -> u64 {
        self.sync_points
    }

    fn take_front(&mut self) -> Option<Pending<G>> {
        let p = self.queue.pop_front();
        self.popped += u64::from(p.is_some());
        p
    }

    /// The number of the entry the next reply answers (entries count from the session's
    /// start).
    pub fn front_number(&self) -> u64 {
        self.popped
    }

    /// The number the next entry pushed will have.
    pub fn next_number(&self) -> u64 {
        self.popped + self.queue.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Pending<G>> {
        self.queue.iter()
    }

    pub fn front(&self) -> Option<&Pending<G>> {
        self.queue.front()
    }

    /// The entry pushed last.
    pub fn back_mut(&mut self) -> Option<&mut Pending<G>> {
        self.queue.back_mut()
    }

    pub fn front_mut(&mut self) -> Option<&mut Pending<G>> {
        self.queue.front_mut()
    }

    pub fn pop(&mut self) -> Option<Pending<G>> {
        self.take_front()
    }

    /// Classifies a server message by tag against the front entry, popping it when complete.
    /// Returns the popped entry (if any) with the step.
    pub fn on_message(&mut self, tag: u8) -> (Step, Option<Pending<G>>) {
        let Some(front) = self.queue.front() else {
            return (Step::Unrelated, None);
        };
        let completes = match (front, tag) {
            (_, be::NOTICE_RESPONSE | be::NOTIFICATION | be::PARAMETER_STATUS) => {
                return (Step::Unrelated, None);
            }
            (Pending::Simple(_) | Pending::Sync(_), be::READY_FOR_QUERY) => true,
            (Pending::Simple(_), _) => false,
            (Pending::Parse(_), be::PARSE_COMPLETE)
            | (Pending::Bind(_), be::BIND_COMPLETE)
            | (Pending::Close(_), be::CLOSE_COMPLETE) => true,
            (Pending::DescribeStatement(_), be::PARAMETER_DESCRIPTION) => false,
            (
                Pending::DescribeStatement(_) | Pending::DescribePortal(_),
                be::ROW_DESCRIPTION | be::NO_DATA,
            ) => true,
            (
                Pending::Execute(_),
                be::COMMAND_COMPLETE | be::EMPTY_QUERY | be::PORTAL_SUSPENDED,
            ) => true,
            (Pending::Execute(_), _) => false,
            _ => return (Step::Unrelated, None),
        };
        if completes {
            (Step::Completes, self.take_front())
        } else {
            (Step::Within, None)
        }
    }

    /// An `ErrorResponse` arrived. A simple `Query` (or a `Sync`) keeps its entry until its
    /// `ReadyForQuery` (`Step::Within`). In the extended protocol the error answers the front
    /// entry, returned with `Step::Completes`; the server then discards every message up to
    /// the next `Sync` (a `Query` too), so those entries get no reply and go to `dropped`.
    /// The flag is true when no `Sync` is queued yet: the server is still discarding, and
    /// messages the client sends until its `Sync` will get no reply either.
    pub fn on_error(
        &mut self,
        mut dropped: impl FnMut(Pending<G>),
    ) -> (Step, Option<Pending<G>>, bool) {
        match self.queue.front() {
            None => return (Step::Unrelated, None, false),
            Some(front) if front.is_sync_point() => return (Step::Within, None, false),
            Some(_) => {}
        }
        let answered = self.take_front();
        while let Some(front) = self.queue.front() {
            if matches!(front, Pending::Sync(_)) {
                break;
            }
            if let Some(p) = self.take_front() {
                dropped(p);
            }
        }
        (Step::Completes, answered, self.queue.is_empty())
    }

    /// Takes out the `Sync` entries right behind the front one, numbered below `below`, for
    /// which `take` is true (it sees what each carries); returns how many went.
    pub fn drop_syncs_behind_front(&mut self, below: u64, take: impl Fn(&G) -> bool) -> usize {
        let mut n = 0;
        while let Some(Pending::Sync(g)) = self.queue.get(1) {
            if self.popped + 1 + n as u64 >= below || !take(g) {
                break;
            }
            self.queue.remove(1);
            n += 1;
        }
        n
    }

    pub fn clear(&mut self) {
        self.popped += self.queue.len() as u64;
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_batch_matches_replies() {
        let mut r: Replies<()> = Replies::default();
        r.push(Pending::Parse(()));
        r.push(Pending::Bind(()));
        r.push(Pending::DescribePortal(()));
        r.push(Pending::Execute(()));
        r.push(Pending::Sync(()));
        assert!(matches!(
            r.on_message(be::PARSE_COMPLETE),
            (Step::Completes, Some(Pending::Parse(())))
        ));
        assert!(matches!(r.on_message(be::BIND_COMPLETE).0, Step::Completes));
        assert!(matches!(
            r.on_message(be::ROW_DESCRIPTION).0,
            Step::Completes
        ));
        assert_eq!(r.on_message(be::DATA_ROW).0, Step::Within);
        assert_eq!(r.on_message(be::NOTICE_RESPONSE).0, Step::Unrelated);
        assert!(matches!(
            r.on_message(be::COMMAND_COMPLETE),
            (Step::Completes, Some(Pending::Execute(())))
        ));
        assert!(matches!(
            r.on_message(be::READY_FOR_QUERY).0,
            Step::Completes
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn error_skips_until_sync() {
        let mut r: Replies<()> = Replies::default();
        r.push(Pending::Parse(()));
        r.push(Pending::Bind(()));
        r.push(Pending::Execute(()));
        r.push(Pending::Sync(()));
        r.push(Pending::Parse(()));
        let mut n = 0;
        let (step, answered, skipping) = r.on_error(|_| n += 1);
        assert_eq!(step, Step::Completes);
        assert!(!skipping, "the Sync is already queued");
        assert!(matches!(answered, Some(Pending::Parse(()))));
        assert_eq!(n, 2);
        assert!(matches!(r.front(), Some(Pending::Sync(()))));
        // An error at Sync (a failed COMMIT) belongs to it; ReadyForQuery completes it.
        assert_eq!(r.on_error(|_| panic!("nothing to drop")).0, Step::Within);
        assert!(matches!(
            r.on_message(be::READY_FOR_QUERY).0,
            Step::Completes
        ));
        assert!(matches!(r.front(), Some(Pending::Parse(()))));
        // An error before the client's Sync: the server discards until it.
        let (_, _, skipping) = r.on_error(|_| {});
        assert!(skipping);
        assert!(r.is_empty());
    }

    #[test]
    fn simple_query_spans_until_ready() {
        let mut r: Replies<()> = Replies::default();
        r.push(Pending::Simple(()));
        assert_eq!(r.on_message(be::ROW_DESCRIPTION).0, Step::Within);
        assert_eq!(r.on_message(be::COMMAND_COMPLETE).0, Step::Within);
        assert_eq!(
            r.on_error(|_| panic!("a simple query is not dropped")).0,
            Step::Within
        );
        assert!(matches!(
            r.on_message(be::READY_FOR_QUERY).0,
            Step::Completes
        ));
    }
}
