//! User-space only: let aya read and write these types in maps.

use crate::{
    approval::ApprovalKey,
    cage::{CageConfig, CageStats},
    dns::{DnsEndpoint, DnsTarget, RevNat},
    egress::{Key4, Key6, PortRules},
    file::{FileRule, InodeKey},
    kernel::KernelSettings,
    process::{ContentEntry, ContentKey, ExecRule, HashKey},
    unix::{ByteClasses, DfaKey, DfaNext},
};

// SAFETY: all are #[repr(C)] plain data with no padding-sensitive invariants; any bit pattern
// is a valid value.
unsafe impl aya::Pod for CageConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for CageStats {}
// SAFETY: as above.
unsafe impl aya::Pod for Key4 {}
// SAFETY: as above.
unsafe impl aya::Pod for Key6 {}
// SAFETY: as above.
unsafe impl aya::Pod for PortRules {}
// SAFETY: as above.
unsafe impl aya::Pod for InodeKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FileRule {}
// SAFETY: as above.
unsafe impl aya::Pod for ExecRule {}
// SAFETY: as above.
unsafe impl aya::Pod for HashKey {}
// SAFETY: as above.
unsafe impl aya::Pod for KernelSettings {}
// SAFETY: as above.
unsafe impl aya::Pod for ContentKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ContentEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for ApprovalKey {}
// SAFETY: as above.
unsafe impl aya::Pod for DfaKey {}
// SAFETY: as above.
unsafe impl aya::Pod for DfaNext {}
// SAFETY: as above.
unsafe impl aya::Pod for ByteClasses {}
// SAFETY: as above.
unsafe impl aya::Pod for DnsTarget {}
// SAFETY: as above.
unsafe impl aya::Pod for DnsEndpoint {}
// SAFETY: as above.
unsafe impl aya::Pod for RevNat {}
