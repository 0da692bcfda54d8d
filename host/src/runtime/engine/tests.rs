use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn a_wide_memory_can_be_reserved_and_more_than_the_address_space_cannot() {
    assert!(can_reserve(Layout::Wide.memory_bytes()));
    assert!(!can_reserve(1 << 60));
}

#[test]
fn x86_with_a_47_bit_address_space_keeps_wide_slots() {
    let plan = plan("x86_64", 1032, 256 * MIB, 128 << 40);
    assert_eq!(
        plan.allocator,
        Allocator::Pooling {
            slots: 1032,
            layout: Layout::Wide
        }
    );
    assert!(plan.why.contains("bounds checks elided"), "{}", plan.why);
}

#[test]
fn a_39_bit_arm_board_gets_a_pool_sized_to_the_memory_limit() {
    // 39 bits: 512 GiB. 136 slots (the smallest budget) × 4 memories.
    let plan = plan("aarch64", 136, 256 * MIB, 512 * GIB);
    let layout = Layout::Compact {
        reservation: 256 * MIB,
    };
    assert_eq!(plan.allocator, Allocator::Pooling { slots: 136, layout });
    assert!(136 * layout.slot_bytes() < 160 * GIB);
    assert!(plan.why.contains("aarch64"), "{}", plan.why);
    // A big budget (776 slots) does not fit in half of it: the pool shrinks.
    let plan = super::plan("aarch64", 776, 256 * MIB, 512 * GIB);
    let Allocator::Pooling { slots, .. } = plan.allocator else {
        panic!("{plan:?}")
    };
    assert!((200..776).contains(&slots), "{slots}");
    assert!(plan.why.contains("shrunk"), "{}", plan.why);
}

#[test]
fn x86_under_a_tight_ulimit_goes_compact_then_on_demand() {
    let plan = plan("x86_64", 136, 64 * MIB, 64 * GIB);
    assert!(
        matches!(plan.allocator, Allocator::Pooling { layout: Layout::Compact { reservation }, .. } if reservation == 64 * MIB),
        "{plan:?}"
    );
    assert!(plan.why.contains("too small for 4 GiB"), "{}", plan.why);
    let plan = super::plan("x86_64", 136, 64 * MIB, 4 * GIB);
    assert_eq!(
        plan.allocator,
        Allocator::OnDemand {
            layout: Layout::Compact {
                reservation: 64 * MIB
            }
        }
    );
    assert!(plan.why.contains("on-demand"), "{}", plan.why);
}

#[test]
fn compact_reservations_round_the_cap_up_to_a_power_of_two() {
    assert_eq!(Layout::compact(200 * MIB), Layout::compact(256 * MIB));
    assert_eq!(Layout::compact(200 * MIB).memory_cap(), 256 * MIB);
    assert_eq!(Layout::compact(1).memory_cap(), MIB);
    assert_eq!(Layout::compact(64 * GIB).memory_cap(), 4 * GIB);
    assert_eq!(Layout::for_arch("x86_64", 256 * MIB), Layout::Wide);
}

#[test]
fn the_address_space_is_the_top_of_the_maps_or_the_rlimit_less_what_is_mapped() {
    let x86 = "55d0c0a00000-55d0c0a21000 r--p 00000000 00:2a 1 /bin/x\n\
               7ffd5a1c2000-7ffd5a1e3000 rw-p 00000000 00:00 0 [stack]\n\
               ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n";
    let status = "Name:\tx\nVmSize:\t  1048576 kB\n";
    assert_eq!(address_space(x86, status, None), (128 << 40) - GIB);
    assert_eq!(address_space(x86, status, Some(16 * GIB)), 15 * GIB);
    let arm39 = "5581a00000-5581a21000 r--p 00000000 00:2a 1 /bin/x\n\
                 7fe5a1c000-7fe5a3d000 rw-p 00000000 00:00 0 [stack]\n";
    assert_eq!(address_space(arm39, status, None), 511 * GIB);
    assert!(reservable_address_space() >= GIB);
    assert_eq!(bytes(258 * MIB), "258 MiB");
    assert_eq!(bytes(1126 * GIB), "1.1 TiB");
}
