//! Cached occupancy answers. They depend only on the function, its attributes and the
//! query, and libraries ask again before every launch, so each is asked of the host once;
//! setting a function attribute or unloading a module forgets them all.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use vgpu_protocol::{CuResult, Opcode, calls};
use zerocopy::{Immutable, IntoBytes};

use crate::driver;

/// Occupancy answers depend only on the function, its attributes and the query, and libraries
/// ask again before every launch (cuBLAS: once per GEMM), so each is asked of the host once.
/// Setting any function attribute forgets them all.
static OCCUPANCY: Mutex<Option<OccupancyAnswers>> = Mutex::new(None);

/// (opcode, query body) -> answer.
type OccupancyAnswers = HashMap<(u16, Vec<u8>), i32>;

pub(super) fn forget_occupancy() {
    *OCCUPANCY.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// The host's answer to occupancy query `op`, asked once.
pub(super) fn occupancy<T: IntoBytes + Immutable>(
    d: &driver::Driver,
    op: Opcode,
    body: &T,
) -> Result<i32, CuResult> {
    let key = (op as u16, body.as_bytes().to_vec());
    if let Some(v) = OCCUPANCY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&key))
    {
        return Ok(*v);
    }
    let v = d
        .conn
        .call(op, body, &[], None, None)?
        .parse::<calls::I32Reply>()?
        .value
        .get();
    OCCUPANCY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(key, v);
    Ok(v)
}
