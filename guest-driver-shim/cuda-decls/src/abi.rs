//! How a value travels in the C calling convention, as a type: [`AbiClass`] maps each
//! argument type to its class (a pointer, an integer of a width, a float, a by-value struct),
//! and [`FnAbi`] a function pointer type to the tuple of its classes. Two signatures with the
//! same classes are called alike, so [`same_abi`] checks an entry point of the shim (which
//! names handles by its own pointer aliases) against the header's declaration: a missing or
//! extra argument, a 32-bit integer where the header has 64 bits, or a pointer where it has an
//! integer fail to compile. What a pointer points to is not compared.

/// Marker classes.
#[derive(Debug)]
pub enum Ptr {}
/// An integer of 8 bits (either sign).
#[derive(Debug)]
pub enum W8 {}
/// An integer of 16 bits.
#[derive(Debug)]
pub enum W16 {}
/// An integer of 32 bits.
#[derive(Debug)]
pub enum W32 {}
/// An integer of 64 bits.
#[derive(Debug)]
pub enum W64 {}
/// `float`.
#[derive(Debug)]
pub enum F32 {}
/// `double`.
#[derive(Debug)]
pub enum F64 {}

/// The calling-convention class of an argument or return type.
pub trait AbiClass {
    type Class;
}

macro_rules! class {
    ($c:ty: $($t:ty),*) => { $(impl AbiClass for $t { type Class = $c; })* };
}
class!(W8: u8, i8, bool);
class!(W16: u16, i16);
class!(W32: u32, i32);
class!(W64: u64, i64, usize, isize);
class!(F32: f32);
class!(F64: f64);
class!((): ());

impl<T: ?Sized> AbiClass for *mut T {
    type Class = Ptr;
}
impl<T: ?Sized> AbiClass for *const T {
    type Class = Ptr;
}

// Structs the header passes by value: only the same struct matches.
class!(crate::CUipcEventHandle_st: crate::CUipcEventHandle_st);
class!(crate::CUipcMemHandle_st: crate::CUipcMemHandle_st);
class!(crate::CUmemLocation_st: crate::CUmemLocation_st);

/// The classes of a function pointer type: (arguments..., return).
pub trait FnAbi {
    type Classes;
}

macro_rules! fn_abi {
    ($($a:ident)*) => {
        impl<R: AbiClass, $($a: AbiClass),*> FnAbi for unsafe extern "C" fn($($a),*) -> R {
            type Classes = ($($a::Class,)* R::Class,);
        }
        impl<R, $($a),*> AbiClass for Option<unsafe extern "C" fn($($a),*) -> R> {
            type Class = Ptr;
        }
        impl<R, $($a),*> AbiClass for Option<extern "C" fn($($a),*) -> R> {
            type Class = Ptr;
        }
        impl<R, $($a),*> AbiClass for unsafe extern "C" fn($($a),*) -> R {
            type Class = Ptr;
        }
        impl<R, $($a),*> AbiClass for extern "C" fn($($a),*) -> R {
            type Class = Ptr;
        }
    };
}
fn_abi!();
fn_abi!(A1);
fn_abi!(A1 A2);
fn_abi!(A1 A2 A3);
fn_abi!(A1 A2 A3 A4);
fn_abi!(A1 A2 A3 A4 A5);
fn_abi!(A1 A2 A3 A4 A5 A6);
fn_abi!(A1 A2 A3 A4 A5 A6 A7);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12 A13);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12 A13 A14);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12 A13 A14 A15);
fn_abi!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12 A13 A14 A15 A16);

/// Compiles only when `S` (an implementation) is called as `H` (the header's declaration).
///
/// Handles named by other pointer types, and enums as `int`, pass:
///
/// ```
/// use vgpu_cuda_decls::{CUresult, CUstream, abi::same_abi};
/// unsafe extern "C" fn ours(_: *mut core::ffi::c_void, _: i32) -> u32 { 0 }
/// same_abi::<unsafe extern "C" fn(CUstream, u32) -> CUresult, _>(
///     ours as unsafe extern "C" fn(_, _) -> _,
/// );
/// ```
///
/// A 32-bit size where the header has `size_t` does not compile:
///
/// ```compile_fail,E0271
/// use vgpu_cuda_decls::{CUresult, CUdeviceptr, abi::same_abi};
/// unsafe extern "C" fn ours(_: *mut CUdeviceptr, _: u32) -> u32 { 0 }
/// same_abi::<unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult, _>(
///     ours as unsafe extern "C" fn(_, _) -> _,
/// );
/// ```
///
/// nor does a pointer where the header has an integer:
///
/// ```compile_fail,E0271
/// use vgpu_cuda_decls::{CUresult, abi::same_abi};
/// unsafe extern "C" fn ours(_: *mut u8) -> u32 { 0 }
/// same_abi::<unsafe extern "C" fn(u64) -> CUresult, _>(ours as unsafe extern "C" fn(_) -> _);
/// ```
pub const fn same_abi<H: FnAbi, S: FnAbi<Classes = H::Classes>>(implementation: S) {
    core::mem::forget(implementation);
}
