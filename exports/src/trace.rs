//! The exports' trace points, named as QEMU's `nbd/trace-events` names
//! them (see [`schema::trace`]).

schema::trace_points! {
    NBD_NEGOTIATE_BEGIN = "nbd_negotiate_begin",
    NBD_NEGOTIATE_OPTIONS_FLAGS = "nbd_negotiate_options_flags",
    NBD_NEGOTIATE_OPTIONS_CHECK_MAGIC = "nbd_negotiate_options_check_magic",
    NBD_NEGOTIATE_OPTIONS_CHECK_OPTION = "nbd_negotiate_options_check_option",
    NBD_NEGOTIATE_HANDLE_EXPORT_NAME_REQUEST = "nbd_negotiate_handle_export_name_request",
    NBD_NEGOTIATE_SUCCESS = "nbd_negotiate_success",
    NBD_RECEIVE_REQUEST = "nbd_receive_request",
    NBD_CO_RECEIVE_REQUEST_DECODE_TYPE = "nbd_co_receive_request_decode_type",
}
