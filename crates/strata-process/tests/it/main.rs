//! Integration tests of strata-process: real child processes, alive, exited but not reaped,
//! and gone, judged by their owners and by the names they made.

mod liveness;
