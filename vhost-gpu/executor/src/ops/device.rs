//! The device operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `Hello`.
pub(super) fn hello(ex: &mut Executor, r: &mut Req, h: &calls::Hello) -> CallResult {
    let reply = ex.hello_reply();
    if h.proto_major.get() != PROTOCOL_MAJOR {
        let mut refused = reply;
        refused.message = fill_str::<HELLO_MESSAGE_LEN>(&format!(
            "refused: guest speaks protocol {}.{}, this host {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            h.proto_major.get(),
            h.proto_minor.get()
        ));
        r.w.push(r.code(), CuResult::NOT_SUPPORTED.0, &refused, &[]);
        return Ok(());
    }
    let first = !ex.clients.contains_key(&r.client);
    ex.clients.entry(r.client).or_default().greeted = true;
    if first {
        info!(
            "r.client {} connected: guest build '{}', protocol {}.{}, executor {}",
            show(r.client),
            read_str(&h.build_id),
            h.proto_major.get(),
            h.proto_minor.get(),
            ex.gpu.kind()
        );
    }
    r.reply(&reply)
}

/// `ConsoleRead`.
pub(super) fn console_read(ex: &mut Executor, r: &mut Req, a: &calls::ConsoleRead) -> CallResult {
    ex.client(r.client)?;
    let max = (a.max.get() as usize).min(CONSOLE_CHUNK);
    let bytes = ex.console.as_mut().map(|c| c.take(max)).unwrap_or_default();
    r.w.push(r.code(), 0, &(), &bytes);
    Ok(())
}

/// `DeviceGetCount`.
pub(super) fn count(ex: &mut Executor, r: &mut Req, _args: &()) -> CallResult {
    ex.client(r.client)?;
    r.value_i32(ex.gpu.device_count())
}

/// `DeviceGetInfo`.
pub(super) fn info(ex: &mut Executor, r: &mut Req, a: &calls::DeviceArg) -> CallResult {
    ex.client(r.client)?;
    if a.device.get() != 0 {
        return Err(CuResult::INVALID_DEVICE);
    }
    if ex.props.is_none() {
        let mut props = ex.gpu.device_props(0)?;
        // The slice's SM count, as occupancy calculators should size grids.
        if let Some(sms) = ex.gpu.slice_sm_count().or(ex.limits.sm_count)
            && let Some(a) = props.attributes.get_mut(ATTR_MULTIPROCESSOR_COUNT)
        {
            *a = (sms as i32).min(*a);
        }
        ex.props = Some(props);
    }
    let p = ex.props.as_ref().ok_or(CuResult::UNKNOWN)?;
    let quota = ex
        .limits
        .mem_limit
        .map_or(p.total_mem, |l| l.min(p.total_mem));
    let info = calls::DeviceInfo {
        name: fill_str(&p.name),
        uuid: p.uuid,
        total_mem: p.total_mem.into(),
        quota_mem: quota.into(),
        attr_count: (p.attributes.len() as u32).into(),
        _pad: 0.into(),
    };
    r.w.push(r.code(), 0, &info, p.attributes.as_bytes());
    Ok(())
}
