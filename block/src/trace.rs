//! The block layer's trace points, named as QEMU's `block/trace-events`
//! and `trace-events` (jobs) name them (see [`schema::trace`]). Where
//! QEMU prints a pointer, storaged prints the address of its own object
//! (a backend, a node) or the job's id.

schema::trace_points! {
    BLK_CO_PREADV = "blk_co_preadv",
    BLK_CO_PWRITEV = "blk_co_pwritev",
    JOB_STATE_TRANSITION = "job_state_transition",
    JOB_APPLY_VERB = "job_apply_verb",
    JOB_COMPLETED = "job_completed",
}
