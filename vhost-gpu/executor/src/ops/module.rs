//! The module operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `ModuleLoad`.
pub(super) fn load(ex: &mut Executor, r: &mut Req, a: &calls::ModuleLoad) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let mut image = std::mem::take(&mut ex.scratch);
    let gathered = r
        .data_in
        .gather(a.image.offset.get(), a.image.len.get(), &mut image);
    // The module's code and data live in device memory: charge the image's size
    // (an upper bound of what the driver keeps) to the slice.
    let charged = a.image.len.get();
    let loaded = gathered
        .and_then(|()| ex.charge(r.client, charged))
        .and_then(|()| {
            ex.gpu
                .module_load(&image)
                .inspect_err(|_| ex.uncharge(r.client, charged))
        });
    ex.scratch = image;
    let (raw, kernels) = loaded?;
    let ctx = a.ctx.get();
    let c = ex.client(r.client)?;
    let mut funcs = Vec::with_capacity(kernels.len());
    let code = r.code();
    let buf = r.w.buffer();
    let record_start = buf.len();
    buf.extend_from_slice(&[0u8; size_of::<vgpu_protocol::ReplyHeader>()]);
    buf.extend_from_slice(&[0u8; size_of::<calls::ModuleLoadReply>()]);
    for k in &kernels {
        let params_len = k.params.iter().map(|(o, s)| o + s).max().unwrap_or(0);
        let h = c.objects.insert(Object::Func {
            raw: k.raw,
            ctx,
            layout: k.params.clone(),
            params_len,
        });
        funcs.push(h);
        let info = calls::FuncInfo {
            handle: h.into(),
            name_len: (k.name.len() as u32).into(),
            nparams: (k.params.len() as u32).into(),
        };
        buf.extend_from_slice(info.as_bytes());
        buf.extend_from_slice(k.name.as_bytes());
        for &(o, s) in &k.params {
            buf.extend_from_slice(
                calls::ParamInfo {
                    offset: o.into(),
                    size: s.into(),
                }
                .as_bytes(),
            );
        }
        buf.resize(buf.len().next_multiple_of(8), 0);
    }
    let module = c.objects.insert(Object::Module {
        raw,
        ctx,
        funcs,
        charged,
    });
    let body_len = buf.len() - record_start - size_of::<vgpu_protocol::ReplyHeader>();
    let hdr = vgpu_protocol::ReplyHeader {
        opcode: code.into(),
        flags: 0.into(),
        result: 0.into(),
        len: (body_len as u32).into(),
        _pad: 0.into(),
    };
    let fixed = calls::ModuleLoadReply {
        module: module.into(),
        nfuncs: (kernels.len() as u32).into(),
        _pad: 0.into(),
    };
    let at = record_start + size_of::<vgpu_protocol::ReplyHeader>();
    buf[record_start..at].copy_from_slice(hdr.as_bytes());
    buf[at..at + size_of::<calls::ModuleLoadReply>()].copy_from_slice(fixed.as_bytes());
    r.w.count_record(record_start);
    Ok(())
}

/// `ModuleUnload`.
pub(super) fn unload(ex: &mut Executor, r: &mut Req, a: &calls::HandleArg) -> CallResult {
    ex.unload_module(r.client, a.handle.get())?;
    r.ok()
}

/// `ModuleGetGlobal`.
pub(super) fn get_global(ex: &mut Executor, r: &mut Req, a: &calls::ModuleGetGlobal) -> CallResult {
    let tail = r.tail;
    let name = tail
        .get(..a.name_len.get() as usize)
        .ok_or(CuResult::INVALID_VALUE)?;
    let name = std::str::from_utf8(name).map_err(|_| CuResult::INVALID_VALUE)?;
    let (raw, ctx) = match ex.client(r.client)?.objects.get(a.module.get()) {
        Some(Object::Module { raw, ctx, .. }) => (*raw, *ctx),
        _ => return Err(CuResult::INVALID_HANDLE),
    };
    ex.make_current(r.client, ctx)?;
    let (dptr, size) = ex.gpu.module_get_global(raw, name)?;
    ex.client(r.client)?
        .globals
        .insert(dptr, (size, a.module.get()));
    r.reply(&calls::GlobalReply {
        dptr: dptr.into(),
        size: size.into(),
    })
}

/// `FuncGetAttribute`, `FuncSetAttribute`.
pub(super) fn func_attribute(
    ex: &mut Executor,
    r: &mut Req,
    a: &calls::FuncAttribute,
) -> CallResult {
    let raw = ex.func(r.client, a.func.get())?;
    if r.op == Opcode::FuncGetAttribute {
        let v = ex.gpu.func_get_attribute(raw, a.attribute.get())?;
        r.value_i32(v)?;
    } else {
        ex.gpu
            .func_set_attribute(raw, a.attribute.get(), a.value.get())?;
        r.ok()?;
    }
    Ok(())
}
