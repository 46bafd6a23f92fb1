//! Entry paths, static descriptor tables, page tables and ring transitions (assembly).
//!
//! Both entries print `probe: hello` first (a dozen instructions: it is what boot-time
//! benchmarks time), then load the probe's own GDT, page tables, IDT and stack and call
//! `probe_main(protocol, info)`:
//! - `pvh_entry` (32-bit protected mode, paging off, EBX = `hvm_start_info`), named by the Xen
//!   PVH ELF note;
//! - `linux64_entry` (the ELF entry point: 64-bit mode, RSI = zero page).
//!
//! Everything is static data in the image so that no ring-0 loop fills tables (each emulated
//! ring-0 instruction costs microseconds on PVM hosts):
//! - page tables identity-map 0..8 GiB with 2 MiB pages, user-accessible (U/S) so ring-3 loops
//!   can read and write RAM;
//! - the 256 exception stubs sit at 0x100000 + 16 * vector and the TSS at 0x101000 (link.ld
//!   asserts both), so the IDT and the TSS descriptor are assembler constants.
//!
//! GDT selectors: 0x08 kernel code (64-bit), 0x10 kernel data, 0x18 kernel code (32-bit, AP
//! trampoline), 0x20 user data (DPL 3), 0x28 user code (64-bit, DPL 3), 0x30 TSS.

core::arch::global_asm!(
    r#"
    .set KCODE64, 0x08
    .set KDATA, 0x10
    .set KCODE32, 0x18
    .set UDATA, 0x23
    .set UCODE64, 0x2b
    .set TSS_SEL, 0x30
    .set ISR_BASE, 0x100000
    .set TSS_ADDR, 0x101000
    .set CR0_PE_ET_PG, 0x80000011
    .set CR4_PAE, 0x20
    .set MSR_EFER, 0xC0000080
    .set EFER_LME, 0x100
    .set AP_TRAMPOLINE, {ap_trampoline}

/* ---- exception stubs (fixed addresses) and TSS ---- */
    .section .text.fixed, "awx"
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16, 0xcc
    .if vec == 6
    jmp ud_entry
    .else
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .endif
    .set vec, vec + 1
    .endr
    .balign 4096, 0xcc
    .global probe_tss
probe_tss:
    .long 0
    .quad trap_stack_top        /* rsp0: stack for ring 3 -> ring 0 transitions */
    .quad 0, 0, 0               /* rsp1, rsp2, reserved */
    .quad 0, 0, 0, 0, 0, 0, 0   /* ist1..7 */
    .quad 0
    .short 0
    .short 104                  /* I/O bitmap offset beyond the limit: no ring-3 port access */

/* ---- PVH ELF note ---- */
    .section .note.pvh, "a"
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry

/* ---- entries ---- */
    .section .text.probe_entry, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld
    movl $hello_msg, %esi
    movl $hello_len, %ecx
    movw $0x3f8, %dx
    rep outsb
    lgdt gdt_ptr
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl $CR0_PE_ET_PG, %eax
    movl %eax, %cr0
    ljmp $KCODE64, $pvh_long
    .code64
pvh_long:
    xorl %edi, %edi             /* protocol 0: PVH */
    movl %ebx, %esi             /* hvm_start_info (zero-extended) */
    jmp common64

    .global linux64_entry
linux64_entry:
    cli
    cld
    movq %rsi, %rbx
    movl $hello_msg, %esi
    movl $hello_len, %ecx
    movw $0x3f8, %dx
    rep outsb
    lgdt gdt_ptr
    movl $CR4_PAE, %eax
    movq %rax, %cr4
    movl $pml4, %eax
    movq %rax, %cr3
    pushq $KCODE64
    pushq $1f
    lretq
1:
    movl $1, %edi               /* protocol 1: Linux 64-bit */
    movq %rbx, %rsi
common64:
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $kernel_stack_top, %esp
    movw $TSS_SEL, %ax
    ltr %ax
    lidt idt_ptr
    call probe_main
2:  cli
    hlt
    jmp 2b

/* Exception path: the stack holds vector, error code, rip, cs, rflags, rsp, ss. */
isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call probe_exception
3:  cli
    hlt
    jmp 3b

/* ---- ring 3 calls ----
 * probe_user_call(f, arg): runs f(arg) in ring 3 on the user stack and returns its result.
 * Ring 3 returns by executing `ud2` at user_exit_ud: the #UD lands on the TSS rsp0 stack and
 * the handler restores the saved ring-0 stack and callee-saved registers. (`int $0x80` from
 * ring 3 raises #UD on PVM hosts, so a software interrupt cannot be used.) */
    .global probe_user_call
probe_user_call:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, user_saved_rsp
    pushq $UDATA
    pushq $user_stack_top
    pushq $2                    /* RFLAGS: IF=0, IOPL=0 */
    pushq $UCODE64
    pushq $user_trampoline
    movq %rdi, %rax
    movq %rsi, %rdi
    iretq
user_trampoline:
    call *%rax
user_exit_ud:
    ud2
/* #UD: at user_exit_ud it is ring 3 returning; anything else is a real fault. */
ud_entry:
    cmpq $user_exit_ud, (%rsp)
    je user_return
    pushq $0
    pushq $6
    jmp isr_common
user_return:
    movq user_saved_rsp, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

/* ---- application processors ----
 * ap_trampoline..ap_trampoline_end is copied to AP_TRAMPOLINE (SIPI vector AP_TRAMPOLINE >> 12).
 * Real mode -> protected mode -> long mode with the probe's GDT and page tables, then
 * ap_long counts itself in ap_count, records its APIC id in ap_ids and halts. */
    .global ap_trampoline
    .global ap_trampoline_end
ap_trampoline:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdt_ptr - ap_trampoline
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $KCODE32, $(AP_TRAMPOLINE + ap_pm32 - ap_trampoline)
    .code32
ap_pm32:
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %ss
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl $CR0_PE_ET_PG, %eax
    movl %eax, %cr0
    ljmp $KCODE64, $ap_long
    .balign 8
ap_gdt_ptr:
    .short gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:
    .code64
ap_long:
    movl $1, %eax               /* initial APIC id: CPUID.1:EBX[31:24] (xAPIC or x2APIC) */
    cpuid
    movl %ebx, %eax
    shrl $24, %eax
    movl $1, %ecx
    lock xaddl %ecx, ap_count
    cmpl $256, %ecx
    jae 4f
    movb %al, ap_ids(%rcx)
4:  cli
    hlt
    jmp 4b

/* ---- static data ---- */
    .section .rodata.probe_hello, "a"
hello_msg:
    .ascii "probe: hello\n"
    .set hello_len, . - hello_msg

    .section .data.probe_tables, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08 kernel code 64 */
    .quad 0x00CF92000000FFFF    /* 0x10 kernel data */
    .quad 0x00CF9A000000FFFF    /* 0x18 kernel code 32 */
    .quad 0x00CFF2000000FFFF    /* 0x20 user data */
    .quad 0x00AFFA000000FFFF    /* 0x28 user code 64 */
    /* 0x30 TSS: base TSS_ADDR, limit 103, type 0x89 (available 64-bit TSS), present */
    .quad 0x67 | ((TSS_ADDR & 0xFFFFFF) << 16) | (0x89 << 40) | (((TSS_ADDR >> 24) & 0xFF) << 56)
    .quad (TSS_ADDR >> 32)
gdt_end:
    .balign 8
    .short 0, 0, 0
gdt_ptr:                        /* limit + base; 32-bit lgdt reads the low 4 bytes of base */
    .short gdt_end - gdt - 1
    .quad gdt

    .balign 16
idt:
    .set vec, 0
    .rept 256
    .short (ISR_BASE + vec * 16) & 0xFFFF
    .short KCODE64
    .byte 0
    .byte 0x8E                  /* interrupt gate, DPL 0 */
    .short ((ISR_BASE + vec * 16) >> 16) & 0xFFFF
    .long 0
    .long 0
    .set vec, vec + 1
    .endr
    .balign 8
    .short 0, 0, 0
idt_ptr:
    .short 256 * 16 - 1
    .quad idt

    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .set i, 0
    .rept 8
    .quad pd + i * 4096 + 0x7
    .set i, i + 1
    .endr
    .fill 504, 8, 0
pd:
    .set i, 0
    .rept 4096
    .quad (i << 21) + 0x87      /* present, writable, user, 2 MiB */
    .set i, i + 1
    .endr

    .section .bss.probe_stacks, "aw", @nobits
    .balign 4096
kernel_stack:
    .skip 65536
    .global kernel_stack_top
kernel_stack_top:
    .skip 16384
trap_stack_top:
    .skip 65536
user_stack_top:
    .balign 8
user_saved_rsp:
    .skip 8
    .global ap_count
ap_count:
    .skip 4
    .global ap_ids
ap_ids:
    .skip 256
"#,
    ap_trampoline = const ferry_probe::AP_TRAMPOLINE_GPA,
    options(att_syntax)
);

unsafe extern "C" {
    /// Start of the AP trampoline code (copied below 1 MiB).
    pub static ap_trampoline: u8;
    /// End of the AP trampoline code.
    pub static ap_trampoline_end: u8;
    /// Number of APs that reached long mode (incremented with `lock xadd`).
    pub static mut ap_count: u32;
    /// APIC ids of the APs, in arrival order.
    pub static mut ap_ids: [u8; 256];
    /// Runs `f(arg)` in ring 3 and returns its result.
    pub fn probe_user_call(f: extern "C" fn(u64) -> u64, arg: u64) -> u64;
}
