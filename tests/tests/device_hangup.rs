//! A guest process whose device dies stops waiting at once: the daemon (or the pool's worker
//! that serves the slice) is killed with `kill -9` while the process waits for a completion.
//! Found by the soak (`vgpu-soak`): programs hung for the shim's hour-long bound.

use std::time::{Duration, Instant};

use vgpu_tests::{Daemon, RawClient, scratch};
use vgpu_virtio_user::Error;

#[test]
fn waiting_for_a_completion_ends_when_the_device_process_dies() {
    let dir = scratch("device-hangup");
    let mut daemon = Daemon::start_sim(&dir, &[]);
    let mut client = RawClient::connect(&daemon.socket);
    daemon.child.kill().expect("kill the daemon");
    daemon.child.wait().expect("reap the daemon");
    let start = Instant::now();
    let r = client.vu.wait_for_used(Duration::from_secs(60));
    assert!(
        matches!(r, Err(Error::Disconnected)),
        "{r:?} after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
