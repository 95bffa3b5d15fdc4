//! The plain forwards of the protocol's table, end to end on the sim GPU: the program's
//! exports (generated in the shim), the wire bodies, the host's handle checks and the call on
//! the `Gpu` (generated in the executor), and the simulator's answers.

use vgpu_tests::{Daemon, compile_c, guest_command, scratch};

#[test]
fn every_plain_forward_reaches_the_gpu_and_answers() {
    let dir = scratch("forwards");
    let program = compile_c("forwards.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let stdout = daemon
        .run_passing(
            guest_command(&program, &daemon.socket).arg("--sim-checks"),
            "FORWARDS DONE",
        )
        .stdout;
    let want = [
        // A value set on one stream comes back, and is copied to another.
        "RESULT set_sync_policy=0",
        "RESULT get_sync_policy=0 value=3",
        "RESULT copy_attributes=0",
        "RESULT copied_sync_policy=0 value=3",
        // The simulator refuses an attribute streams do not have.
        "RESULT bad_attribute=1",
        // One device: no peer.
        "RESULT p2p_same_device=101",
        // The simulator's fixed answer (1 << 27), and its answer to SM-count affinity.
        "RESULT tex1d_linear_max_width=0 width=134217728",
        "RESULT exec_affinity_sm_count=0 supported=0",
        "RESULT reset_persisting_l2=0",
        "RESULT flush_rdma_writes=0",
        // A handle this client never created, checked by the host: INVALID_HANDLE.
        "SIM bogus_stream=400",
        // A NULL out-pointer, refused by the shim before anything is sent.
        "SIM null_out=1",
        // A device the guest does not have: INVALID_DEVICE, from the host's check.
        "SIM other_device=101",
    ];
    for line in want {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?}:\n{stdout}"
        );
    }
}
