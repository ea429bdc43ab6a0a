//! The monitor's trace points, named as QEMU's `monitor/trace-events`
//! names them (see [`schema::trace`]); `mon` is the session's address.

schema::trace_points! {
    HANDLE_QMP_COMMAND = "handle_qmp_command",
    MONITOR_QMP_RESPOND = "monitor_qmp_respond",
}
