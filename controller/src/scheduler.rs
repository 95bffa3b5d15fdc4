//! In-memory capacity index and the placement decision.
//!
//! The index holds, per GPU, what is used (SMs, memory, slice shapes). `place` answers which GPU
//! a request gets: the VM's own host first; then, if allowed, other hosts sharing the VM host's
//! topology labels in the order asked (rack, then zone), then any host. Within a tier it picks by
//! binpack (fullest GPU that fits) or spread (emptiest). The caller holds the pool lock around
//! `place` + store write + `apply`, so two requests can never take the same capacity.

use std::collections::{BTreeMap, HashMap};

use crate::model::{SliceMode, Strategy};

/// Shape of a slice, for the homogeneous-profile rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Fixed profile 1/N.
    Profile(u32),
    /// Arbitrary SM count + memory.
    Custom,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Profile(u32),
    Custom { sm: u32, mem: u64 },
}

impl Want {
    pub fn shape(self) -> Shape {
        match self {
            Want::Profile(n) => Shape::Profile(n),
            Want::Custom { .. } => Shape::Custom,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GpuSlot {
    pub uuid: String,
    pub host: u32,
    pub numa: Option<i32>,
    pub sm_total: u32,
    pub mem_total: u64,
    /// SM capacity including the oversubscription ratio.
    pub sm_cap: u64,
    pub sm_used: u64,
    pub mem_used: u64,
    pub mode: SliceMode,
    pub healthy: bool,
    /// Slice count per shape currently on the GPU.
    pub shapes: Vec<(Shape, u32)>,
}

impl GpuSlot {
    pub fn slices(&self) -> u32 {
        self.shapes.iter().map(|s| s.1).sum()
    }

    /// SMs and memory a request would take on this GPU, if it fits.
    #[inline]
    pub fn demand(&self, want: Want) -> Option<(u32, u64)> {
        self.fit(want).ok()
    }

    /// SMs and memory a request would take on this GPU, or why it does not fit.
    #[inline]
    pub fn fit(&self, want: Want) -> Result<(u32, u64), Misfit> {
        let (sm, mem) = self.size_of(want);
        if sm == 0 || sm > self.sm_total || mem > self.mem_total {
            return Err(Misfit::TooLarge);
        }
        if !self.healthy {
            return Err(Misfit::Unhealthy);
        }
        if self.mem_total - self.mem_used < mem {
            return Err(Misfit::Memory {
                free: self.mem_total - self.mem_used,
            });
        }
        if self.sm_used + u64::from(sm) > self.sm_cap {
            return Err(Misfit::Sms {
                free: self.sm_cap.saturating_sub(self.sm_used),
            });
        }
        if self.mode == SliceMode::Homogeneous {
            let shape = want.shape();
            if let Some((held, _)) = self.shapes.iter().find(|(s, c)| *c > 0 && *s != shape) {
                return Err(Misfit::Profile(*held));
            }
        }
        Ok((sm, mem))
    }

    /// SMs and memory of `want` on this GPU (a profile is a fraction of it).
    fn size_of(&self, want: Want) -> (u32, u64) {
        match want {
            Want::Profile(n) => (self.sm_total / n, self.mem_total / u64::from(n)),
            Want::Custom { sm, mem } => (sm, mem),
        }
    }
}

/// Why a GPU cannot take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// The slice is larger than the whole GPU (or has no SMs).
    TooLarge,
    /// The GPU is marked unhealthy.
    Unhealthy,
    /// Not enough free memory.
    Memory { free: u64 },
    /// Not enough free SMs (the capacity includes the oversubscription ratio).
    Sms { free: u64 },
    /// A homogeneous GPU that holds slices of another shape.
    Profile(Shape),
}

impl Misfit {
    /// The reason as the API names it (`error.reason`).
    pub fn code(self) -> &'static str {
        match self {
            Misfit::TooLarge => "too_large",
            Misfit::Unhealthy => "unhealthy",
            Misfit::Memory { .. } => "memory",
            Misfit::Sms { .. } => "sm",
            Misfit::Profile(_) => "profile",
        }
    }
}

fn shape_name(s: Shape) -> String {
    match s {
        Shape::Profile(1) => "whole-GPU (1)".into(),
        Shape::Profile(n) => format!("1/{n}"),
        Shape::Custom => "arbitrary (SMs + memory)".into(),
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
}

/// A GPU as the index needs it.
#[derive(Clone, Debug)]
pub struct GpuSpec {
    pub uuid: String,
    pub numa: Option<i32>,
    pub sm: u32,
    pub mem: u64,
    pub mode: SliceMode,
    /// Compute oversubscription ratio (>= 1.0).
    pub ratio: f64,
    pub healthy: bool,
}

#[derive(Clone, Debug)]
pub struct HostSlot {
    pub name: String,
    pub gpus: Vec<u32>,
    pub labels: BTreeMap<String, String>,
    pub schedulable: bool,
    pub alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub gpu: u32,
    pub host: u32,
    pub sm: u32,
    pub mem: u64,
    pub remote: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    #[error("Unknown host {0:?}")]
    UnknownHost(String),
    /// No GPU can take the request; `reason` names the constraint that refused the most
    /// GPUs (`Misfit::code`, or `drained`, `host_lost`, `no_gpus`), `message` says it per GPU.
    #[error("{message}")]
    NoCapacity {
        reason: &'static str,
        message: String,
    },
}

#[derive(Default, Debug)]
pub struct Index {
    pub hosts: Vec<HostSlot>,
    pub host_ix: HashMap<String, u32>,
    pub gpus: Vec<GpuSlot>,
    pub gpu_ix: HashMap<String, u32>,
    /// (label key, value) -> hosts carrying it.
    labels: HashMap<(String, String), Vec<u32>>,
}

/// The request's placement knobs.
#[derive(Clone, Debug)]
pub struct PlaceRequest<'a> {
    pub vm_host: &'a str,
    pub want: Want,
    pub allow_remote: bool,
    pub strategy: Strategy,
    pub numa: Option<i32>,
    pub topology: &'a [String],
    /// Only this GPU (index into `Index::gpus`): a placement another scheduler already decided
    /// (OpenStack Placement's allocation, `placement.rs`).
    pub only_gpu: Option<u32>,
}

impl Index {
    /// Add or update a host and its GPUs (usage of GPUs already known is kept).
    pub fn upsert_host(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        schedulable: bool,
        gpus: &[GpuSpec],
    ) -> u32 {
        let h = match self.host_ix.get(name) {
            Some(&h) => {
                let old = std::mem::take(&mut self.hosts[h as usize].labels);
                for (k, v) in old {
                    if let Some(list) = self.labels.get_mut(&(k, v)) {
                        list.retain(|x| *x != h);
                    }
                }
                h
            }
            None => {
                let h = self.hosts.len() as u32;
                self.hosts.push(HostSlot {
                    name: name.to_string(),
                    gpus: Vec::new(),
                    labels: BTreeMap::new(),
                    schedulable,
                    alive: true,
                });
                self.host_ix.insert(name.to_string(), h);
                h
            }
        };
        for (k, v) in labels {
            self.labels
                .entry((k.clone(), v.clone()))
                .or_default()
                .push(h);
        }
        let mut list = Vec::with_capacity(gpus.len());
        for GpuSpec {
            uuid,
            numa,
            sm,
            mem,
            mode,
            ratio,
            healthy,
        } in gpus
        {
            let g = match self.gpu_ix.get(uuid) {
                Some(&g) => g,
                None => {
                    let g = self.gpus.len() as u32;
                    self.gpus.push(GpuSlot {
                        uuid: uuid.clone(),
                        host: h,
                        numa: None,
                        sm_total: 0,
                        mem_total: 0,
                        sm_cap: 0,
                        sm_used: 0,
                        mem_used: 0,
                        mode: SliceMode::Homogeneous,
                        healthy: true,
                        shapes: Vec::new(),
                    });
                    self.gpu_ix.insert(uuid.clone(), g);
                    g
                }
            };
            let slot = &mut self.gpus[g as usize];
            slot.host = h;
            slot.numa = *numa;
            slot.sm_total = *sm;
            slot.mem_total = *mem;
            slot.mode = *mode;
            slot.sm_cap = (f64::from(*sm) * ratio.max(1.0)).floor() as u64;
            slot.healthy = *healthy;
            list.push(g);
        }
        // GPUs that disappeared from the host stop taking slices.
        for &old in &self.hosts[h as usize].gpus {
            if !list.contains(&old) {
                self.gpus[old as usize].healthy = false;
            }
        }
        let hs = &mut self.hosts[h as usize];
        hs.gpus = list;
        hs.labels = labels.clone();
        h
    }

    pub fn set_gpu_policy(&mut self, uuid: &str, mode: SliceMode, ratio: f64, healthy: bool) {
        if let Some(&g) = self.gpu_ix.get(uuid) {
            let s = &mut self.gpus[g as usize];
            s.mode = mode;
            s.sm_cap = (f64::from(s.sm_total) * ratio.max(1.0)).floor() as u64;
            s.healthy = healthy;
        }
    }

    pub fn apply(&mut self, gpu: u32, shape: Shape, sm: u32, mem: u64) {
        let g = &mut self.gpus[gpu as usize];
        g.sm_used += u64::from(sm);
        g.mem_used += mem;
        match g.shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some(e) => e.1 += 1,
            None => g.shapes.push((shape, 1)),
        }
    }

    pub fn unapply(&mut self, gpu: u32, shape: Shape, sm: u32, mem: u64) {
        let g = &mut self.gpus[gpu as usize];
        g.sm_used = g.sm_used.saturating_sub(u64::from(sm));
        g.mem_used = g.mem_used.saturating_sub(mem);
        if let Some(e) = g.shapes.iter_mut().find(|(s, _)| *s == shape) {
            e.1 = e.1.saturating_sub(1);
        }
        g.shapes.retain(|(_, c)| *c > 0);
    }

    fn usable(&self, h: u32) -> bool {
        let hs = &self.hosts[h as usize];
        hs.alive && hs.schedulable
    }

    /// Best GPU over the given hosts. Score: lower is better.
    fn best<I: Iterator<Item = u32>>(
        &self,
        hosts: I,
        req: &PlaceRequest<'_>,
        skip: Option<u32>,
    ) -> Option<Decision> {
        let mut best: Option<(u128, Decision)> = None;
        for h in hosts {
            if Some(h) == skip || !self.usable(h) {
                continue;
            }
            for &gi in &self.hosts[h as usize].gpus {
                if req.only_gpu.is_some_and(|only| only != gi) {
                    continue;
                }
                let g = &self.gpus[gi as usize];
                let Some((sm, mem)) = g.demand(req.want) else {
                    continue;
                };
                let mem_after = g.mem_total - g.mem_used - mem;
                let sm_after = g.sm_cap - g.sm_used - u64::from(sm);
                // Fullest first for binpack, emptiest first for spread; memory dominates.
                let fill =
                    (u128::from(mem_after) << 32) | u128::from(sm_after.min(u64::from(u32::MAX)));
                let mut score = match req.strategy {
                    Strategy::Binpack => fill,
                    Strategy::Spread => u128::MAX / 4 - fill,
                };
                if let Some(n) = req.numa
                    && g.numa != Some(n)
                {
                    score |= 1u128 << 127; // a NUMA match beats any fill level
                }
                if best.as_ref().is_none_or(|(s, _)| score < *s) {
                    best = Some((
                        score,
                        Decision {
                            gpu: gi,
                            host: h,
                            sm,
                            mem,
                            remote: false,
                        },
                    ));
                }
            }
        }
        best.map(|(_, d)| d)
    }

    /// Decide where a request goes. Does not change the index.
    pub fn place(&self, req: &PlaceRequest<'_>) -> Result<Decision, PlaceError> {
        let vh = *self
            .host_ix
            .get(req.vm_host)
            .ok_or_else(|| PlaceError::UnknownHost(req.vm_host.to_string()))?;
        if let Some(d) = self.best(std::iter::once(vh), req, None) {
            return Ok(d);
        }
        if !req.allow_remote {
            return Err(self.no_capacity(
                std::iter::once(vh),
                req.want,
                format!(
                    "no GPU on host {:?} has room for the slice and allow_remote is false",
                    req.vm_host
                ),
            ));
        }
        let no_numa = PlaceRequest {
            numa: None,
            ..req.clone()
        };
        let labels = &self.hosts[vh as usize].labels;
        for key in req.topology {
            if let Some(v) = labels.get(key)
                && let Some(list) = self.labels.get(&(key.clone(), v.clone()))
                && let Some(d) = self.best(list.iter().copied(), &no_numa, Some(vh))
            {
                return Ok(Decision { remote: true, ..d });
            }
        }
        match self.best(0..self.hosts.len() as u32, &no_numa, Some(vh)) {
            Some(d) => Ok(Decision { remote: true, ..d }),
            None => Err(self.no_capacity(
                0..self.hosts.len() as u32,
                req.want,
                "no GPU in the pool has room for the slice".to_string(),
            )),
        }
    }

    /// Why none of `hosts`' GPUs takes `want`: the most common reason, and each GPU's (only
    /// computed when a placement fails).
    fn no_capacity(
        &self,
        hosts: impl Iterator<Item = u32>,
        want: Want,
        summary: String,
    ) -> PlaceError {
        let mut tally: Vec<(&'static str, usize)> = Vec::new();
        let mut details = Vec::new();
        let mut count = |code: &'static str| match tally.iter_mut().find(|(c, _)| *c == code) {
            Some(e) => e.1 += 1,
            None => tally.push((code, 1)),
        };
        for h in hosts {
            let hs = &self.hosts[h as usize];
            if !hs.alive {
                count("host_lost");
                details.push(format!("host {:?} is lost (no heartbeat)", hs.name));
                continue;
            }
            if !hs.schedulable {
                count("drained");
                details.push(format!("host {:?} is drained", hs.name));
                continue;
            }
            if hs.gpus.is_empty() {
                count("no_gpus");
                details.push(format!("host {:?} has no GPUs", hs.name));
                continue;
            }
            for &gi in &hs.gpus {
                let g = &self.gpus[gi as usize];
                let Err(m) = g.fit(want) else { continue };
                count(m.code());
                let (sm, mem) = g.size_of(want);
                details.push(match m {
                    Misfit::TooLarge => format!(
                        "{}: the slice ({sm} SMs, {}) is larger than the GPU ({} SMs, {})",
                        g.uuid,
                        gib(mem),
                        g.sm_total,
                        gib(g.mem_total)
                    ),
                    Misfit::Unhealthy => format!("{}: unhealthy", g.uuid),
                    Misfit::Memory { free } => format!(
                        "{}: memory {} free, {} wanted",
                        g.uuid,
                        gib(free),
                        gib(mem)
                    ),
                    Misfit::Sms { free } => format!(
                        "{}: {free} of {} SMs free, {sm} wanted",
                        g.uuid, g.sm_cap
                    ),
                    Misfit::Profile(held) => format!(
                        "{}: homogeneous and holds {} slices, so a {} slice cannot join them (slice_mode mixed allows it)",
                        g.uuid,
                        shape_name(held),
                        shape_name(want.shape())
                    ),
                });
            }
        }
        // The most common reason; the first seen on a tie.
        let reason = tally
            .iter()
            .fold(None::<(&'static str, usize)>, |best, &(c, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((c, n)),
            })
            .map_or("no_gpus", |(c, _)| c);
        const SHOWN: usize = 6;
        let more = details.len().saturating_sub(SHOWN);
        details.truncate(SHOWN);
        let mut message = format!("{summary} (reason: {reason}): {}", details.join("; "));
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        PlaceError::NoCapacity { reason, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(host: &str, n: u32) -> Vec<GpuSpec> {
        (0..n)
            .map(|i| GpuSpec {
                uuid: format!("{host}-g{i}"),
                numa: Some(i as i32 % 2),
                sm: 132,
                mem: 141 << 30,
                mode: SliceMode::Homogeneous,
                ratio: 1.0,
                healthy: true,
            })
            .collect()
    }

    fn req<'a>(
        host: &'a str,
        want: Want,
        remote: bool,
        strategy: Strategy,
        topo: &'a [String],
    ) -> PlaceRequest<'a> {
        PlaceRequest {
            vm_host: host,
            want,
            allow_remote: remote,
            strategy,
            numa: None,
            topology: topo,
            only_gpu: None,
        }
    }

    fn labels(rack: &str, zone: &str) -> BTreeMap<String, String> {
        [
            ("rack".to_string(), rack.to_string()),
            ("zone".to_string(), zone.to_string()),
        ]
        .into()
    }

    /// An index of one unlabelled host `name` with `n` GPUs.
    fn one_host(name: &str, n: u32) -> Index {
        let mut ix = Index::default();
        ix.upsert_host(name, &BTreeMap::new(), true, &gpus(name, n));
        ix
    }

    fn custom(sm: u32, mem: u64) -> Want {
        Want::Custom { sm, mem }
    }

    /// Places `want` on `host` itself: binpack, no remote fallback, no topology.
    fn place_local(ix: &Index, host: &str, want: Want) -> Result<Decision, PlaceError> {
        ix.place(&req(host, want, false, Strategy::Binpack, &[]))
    }

    /// Mutation caught: `only_gpu` ignored (binpack would take the fuller GPU 0).
    #[test]
    fn only_gpu_pins_the_decision() {
        let mut ix = one_host("h1", 2);
        ix.apply(0, Shape::Profile(4), 33, 35 << 30);
        let free = req("h1", Want::Profile(4), false, Strategy::Binpack, &[]);
        assert_eq!(ix.place(&free).unwrap().gpu, 0);
        let pinned = PlaceRequest {
            only_gpu: Some(1),
            ..free.clone()
        };
        assert_eq!(ix.place(&pinned).unwrap().gpu, 1);
        // a pinned GPU without room is no capacity, never another GPU
        for _ in 0..4 {
            ix.apply(1, Shape::Profile(4), 33, 35 << 30);
        }
        assert!(matches!(
            ix.place(&pinned),
            Err(PlaceError::NoCapacity { .. })
        ));
    }

    #[test]
    fn homogeneous_profiles_and_capacity() {
        let mut ix = one_host("h1", 1);
        for _ in 0..4 {
            let d = place_local(&ix, "h1", Want::Profile(4)).unwrap();
            assert_eq!((d.sm, d.mem), (33, (141 << 30) / 4));
            ix.apply(d.gpu, Shape::Profile(4), d.sm, d.mem);
        }
        assert!(place_local(&ix, "h1", Want::Profile(4)).is_err());
        // Free one 1/4: a 1/2 still may not go there (homogeneous), a 1/4 may.
        let g = ix.gpus[0].clone();
        ix.unapply(0, Shape::Profile(4), 33, g.mem_total / 4);
        assert!(place_local(&ix, "h1", Want::Profile(2)).is_err());
        assert!(place_local(&ix, "h1", Want::Profile(4)).is_ok());
        // Mixed mode allows it while memory lasts.
        ix.set_gpu_policy("h1-g0", SliceMode::Mixed, 1.0, true);
        assert!(place_local(&ix, "h1", custom(20, 1 << 30)).is_ok());
    }

    #[test]
    fn oversubscription_is_compute_only() {
        let mut ix = one_host("h1", 1);
        let want = custom(100, 10 << 30);
        let d = place_local(&ix, "h1", want).unwrap();
        ix.apply(d.gpu, Shape::Custom, d.sm, d.mem);
        assert!(place_local(&ix, "h1", want).is_err(), "200 SMs > 132");
        ix.set_gpu_policy("h1-g0", SliceMode::Homogeneous, 2.0, true);
        let d = place_local(&ix, "h1", want).unwrap();
        ix.apply(d.gpu, Shape::Custom, d.sm, d.mem);
        // Memory never oversubscribed: 141 GiB total.
        let big = custom(1, 122 << 30);
        assert!(place_local(&ix, "h1", big).is_err());
        let fits = custom(1, 121 << 30);
        assert!(place_local(&ix, "h1", fits).is_ok());
    }

    #[test]
    fn binpack_vs_spread_and_topology() {
        let mut ix = Index::default();
        ix.upsert_host("vmhost", &labels("r1", "z1"), true, &[]);
        ix.upsert_host("far", &labels("r9", "z9"), true, &gpus("far", 2));
        ix.upsert_host("zone", &labels("r2", "z1"), true, &gpus("zone", 2));
        ix.upsert_host("rack", &labels("r1", "z1"), true, &gpus("rack", 2));
        let topo = vec!["rack".to_string(), "zone".to_string()];
        let w = Want::Profile(8);
        assert!(
            ix.place(&req("vmhost", w, false, Strategy::Binpack, &topo))
                .is_err()
        );
        let d = ix
            .place(&req("vmhost", w, true, Strategy::Binpack, &topo))
            .unwrap();
        assert!(d.remote);
        assert_eq!(ix.hosts[d.host as usize].name, "rack");
        ix.apply(d.gpu, Shape::Profile(8), d.sm, d.mem);
        let d2 = ix
            .place(&req("vmhost", w, true, Strategy::Binpack, &topo))
            .unwrap();
        assert_eq!(d2.gpu, d.gpu, "binpack reuses the started GPU");
        let d3 = ix
            .place(&req("vmhost", w, true, Strategy::Spread, &topo))
            .unwrap();
        assert_ne!(d3.gpu, d.gpu, "spread picks the empty GPU");
        ix.hosts[ix.host_ix["rack"] as usize].schedulable = false;
        let d4 = ix
            .place(&req("vmhost", w, true, Strategy::Binpack, &topo))
            .unwrap();
        assert_eq!(ix.hosts[d4.host as usize].name, "zone");
        ix.hosts[ix.host_ix["zone"] as usize].alive = false;
        let d5 = ix
            .place(&req("vmhost", w, true, Strategy::Binpack, &topo))
            .unwrap();
        assert_eq!(ix.hosts[d5.host as usize].name, "far");
    }

    fn reason(r: Result<Decision, PlaceError>) -> (&'static str, String) {
        match r {
            Err(PlaceError::NoCapacity { reason, message }) => (reason, message),
            other => panic!("expected no capacity, got {other:?}"),
        }
    }

    #[test]
    fn no_capacity_names_the_constraint() {
        let mut ix = one_host("h1", 1);
        let (r, m) = reason(place_local(&ix, "h1", custom(200, 1 << 30)));
        assert_eq!(r, "too_large", "{m}");
        let d = place_local(&ix, "h1", custom(100, 8 << 30)).unwrap();
        ix.apply(d.gpu, Shape::Custom, d.sm, d.mem);
        let (r, m) = reason(place_local(&ix, "h1", custom(40, 1 << 30)));
        assert_eq!(r, "sm", "{m}");
        assert!(m.contains("32 of 132 SMs free, 40 wanted"), "{m}");
        let (r, m) = reason(place_local(&ix, "h1", custom(10, 140 << 30)));
        assert_eq!(r, "memory", "{m}");
        ix.set_gpu_policy("h1-g0", SliceMode::Homogeneous, 2.0, true);
        let (r, m) = reason(place_local(&ix, "h1", Want::Profile(4)));
        assert_eq!(r, "profile", "{m}");
        assert!(m.contains("holds arbitrary (SMs + memory) slices"), "{m}");
        ix.set_gpu_policy("h1-g0", SliceMode::Homogeneous, 1.0, false);
        assert_eq!(reason(place_local(&ix, "h1", custom(1, 1))).0, "unhealthy");
        ix.hosts[0].schedulable = false;
        assert_eq!(reason(place_local(&ix, "h1", custom(1, 1))).0, "drained");
        ix.hosts[0].alive = false;
        assert_eq!(reason(place_local(&ix, "h1", custom(1, 1))).0, "host_lost");
        let empty = one_host("h2", 0);
        assert_eq!(reason(place_local(&empty, "h2", custom(1, 1))).0, "no_gpus");
    }

    #[test]
    fn numa_hint_preferred() {
        let ix = one_host("h", 2);
        let mut r = req("h", Want::Profile(2), false, Strategy::Binpack, &[]);
        r.numa = Some(1);
        let d = ix.place(&r).unwrap();
        assert_eq!(ix.gpus[d.gpu as usize].numa, Some(1));
    }
}
