# holes_bios.S: firmware of the poison lab's hole-migration guest (experiment qemu-holes).
#
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# A 64 KiB BIOS image (QEMU -bios) that runs in real mode, with no other firmware:
#   1. installs its own machine-check (#MC, vector 18) and COM1 (IRQ 4) handlers;
#   2. fills guest RAM 0x70000-0x9ffff (around the hole) with a xorshift32 sequence seeded from the TSC, so that
#      no two runs (and no destination QEMU) can produce the same RAM by chance;
#   3. enables machine checks (CR4.MCE) and the COM1 receive interrupt (8259 PIC, IRQ 4; the
#      local APIC is disabled so the PIC reaches the CPU directly), prints "READY" on COM1 and
#      sleeps in hlt.
# The host then drives it:
#   - a byte received on COM1 makes the guest read the dword at HOLE_GPA and print
#     "READ" then "VALUE xxxxxxxx", and sleep again;
#   - a machine check prints "MCE mcg=... status=... addr=..." (bank 9, where QEMU injects
#     memory errors) and "AO" or "AR". After an action-optional one (QEMU's early-kill report of
#     a poisoned page) it clears the bank and returns; after an action-required one (the guest
#     touched a poisoned page) it halts for good, as an OS would kill the task.
# So the guest's own log (COM1) tells whether a read of the page gave data or a machine check.
#
# Build (the poison lab does this):
#     as --32 -o holes_bios.o holes_bios.S
#     ld -m elf_i386 -Ttext 0 --oformat binary -o holes_bios.bin holes_bios.o

        .set    HOLE_SEGMENT, 0x8000            # HOLE_GPA 0x80000 = 8000:0000
        .set    FILL_FIRST, 0x7000              # segments 7000..9000: 0x70000-0x9ffff
        .set    FILL_END, 0xa000
        .set    COM1, 0x3f8
        .set    PIC1, 0x20
        .set    IRQ_BASE, 0x08                  # IRQ n -> vector 8 + n (the PC BIOS layout)
        .set    MSR_APIC_BASE, 0x1b
        .set    MSR_MCG_STATUS, 0x17a
        .set    MSR_MC9_STATUS, 0x425
        .set    MSR_MC9_ADDR, 0x426

        .code16
        .text
        .globl  _start
_start:
start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ss
        movw    $0x7000, %sp
        movw    %ax, %ds
        movw    $com1_handler, (IRQ_BASE+4)*4
        movw    %cs, (IRQ_BASE+4)*4+2
        movw    $mc_handler, 18*4
        movw    %cs, 18*4+2
        call    uart_init
        call    fill_pattern
        movl    %cr4, %eax
        orl     $0x40, %eax                     # CR4.MCE
        movl    %eax, %cr4
        call    irq_init
        movw    $text_ready, %si
        call    puts
        sti
idle:
        hlt
        jmp     idle

# irq_init: local APIC off (the 8259's INTR then goes straight to the CPU), 8259 master at
# vector 8 with only IRQ 4 (COM1) unmasked, COM1 interrupt on received data.
irq_init:
        movl    $MSR_APIC_BASE, %ecx
        rdmsr
        andl    $~0x800, %eax                   # IA32_APIC_BASE.EN
        wrmsr
        movb    $0x11, %al                      # ICW1: edge, cascade, ICW4 follows
        outb    %al, $PIC1
        movb    $IRQ_BASE, %al                  # ICW2
        outb    %al, $PIC1+1
        movb    $0x04, %al                      # ICW3: slave on IRQ 2
        outb    %al, $PIC1+1
        movb    $0x01, %al                      # ICW4: 8086 mode
        outb    %al, $PIC1+1
        movb    $0xef, %al                      # OCW1: all masked but IRQ 4
        outb    %al, $PIC1+1
        movw    $COM1 + 4, %dx
        movb    $0x0b, %al                      # MCR: DTR, RTS, OUT2 (the IRQ gate)
        outb    %al, %dx
        movw    $COM1 + 1, %dx
        movb    $0x01, %al                      # IER: received data available
        outb    %al, %dx
        ret

# fill_pattern: xorshift32 over 0x70000-0x9ffff, state seeded from the TSC.
fill_pattern:
        rdtsc
        orl     $1, %eax
        movl    %eax, %ebx
        movw    $FILL_FIRST, %cx
fill_segment:
        movw    %cx, %es
        xorw    %di, %di
fill_dword:
        movl    %ebx, %eax
        shll    $13, %eax
        xorl    %eax, %ebx
        movl    %ebx, %eax
        shrl    $17, %eax
        xorl    %eax, %ebx
        movl    %ebx, %eax
        shll    $5, %eax
        xorl    %eax, %ebx
        movl    %ebx, %es:(%di)
        addw    $4, %di
        jnz     fill_dword                      # DI wrapped: this 64 KiB is done
        addw    $0x1000, %cx
        cmpw    $FILL_END, %cx
        jb      fill_segment
        ret

# COM1 interrupt: take the byte, then read the dword at HOLE_GPA and print it.
com1_handler:
        pushal
        pushw   %es
        movw    $COM1, %dx
        inb     %dx, %al                        # the received byte (clears the interrupt)
        movb    $0x20, %al                      # end of interrupt
        outb    %al, $PIC1
        movw    $text_read, %si
        call    puts
        movw    $HOLE_SEGMENT, %ax
        movw    %ax, %es
        movl    %es:0, %eax
        movl    %eax, %ebx
        movw    $text_value, %si
        call    puts
        movl    %ebx, %eax
        call    put_hex32
        movw    $text_crlf, %si
        call    puts
        popw    %es
        popal
        iret

# #MC: print MCG_STATUS and bank 9, then return (action optional) or stop (action required).
mc_handler:
        pushal
        movw    $text_mce, %si
        call    puts
        movl    $MSR_MCG_STATUS, %ecx
        call    put_msr
        movw    $text_status, %si
        call    puts
        movl    $MSR_MC9_STATUS, %ecx
        call    put_msr
        movl    %edx, %ebp                      # status high half: AR is bit 55
        movw    $text_addr, %si
        call    puts
        movl    $MSR_MC9_ADDR, %ecx
        call    put_msr
        testl   $0x00800000, %ebp
        jnz     mc_action_required
        movw    $text_ao, %si
        call    puts
        xorl    %eax, %eax
        xorl    %edx, %edx
        movl    $MSR_MC9_STATUS, %ecx
        wrmsr
        movl    $MSR_MCG_STATUS, %ecx
        wrmsr
        popal
        iret
mc_action_required:
        movw    $text_ar, %si
        call    puts
mc_stop:
        cli
        hlt
        jmp     mc_stop

# put_msr: print MSR %ecx as 16 hex digits; leaves %edx:%eax = its value.
put_msr:
        rdmsr
        pushl   %eax
        movl    %edx, %eax
        call    put_hex32
        popl    %eax
        pushl   %eax
        call    put_hex32
        popl    %eax
        ret

# put_hex32: print %eax as 8 hex digits.
put_hex32:
        pushl   %eax
        pushw   %cx
        movw    $8, %cx
hex_digit:
        roll    $4, %eax
        pushl   %eax
        andb    $0x0f, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     hex_out
        addb    $'a' - '0' - 10, %al
hex_out:
        call    putc
        popl    %eax
        loop    hex_digit
        popw    %cx
        popl    %eax
        ret

# uart_init: COM1 at 115200 8N1, FIFO on.
uart_init:
        movw    $COM1 + 3, %dx
        movb    $0x80, %al                      # DLAB=1
        outb    %al, %dx
        movw    $COM1, %dx
        movb    $1, %al                         # divisor 1: 115200 baud
        outb    %al, %dx
        movw    $COM1 + 1, %dx
        xorb    %al, %al
        outb    %al, %dx
        movw    $COM1 + 3, %dx
        movb    $0x03, %al                      # 8N1, DLAB=0
        outb    %al, %dx
        movw    $COM1 + 2, %dx
        movb    $0x07, %al                      # FIFO on, cleared
        outb    %al, %dx
        ret

# puts: print the NUL-terminated string at %cs:%si.
puts:
        pushw   %ax
puts_next:
        movb    %cs:(%si), %al
        incw    %si
        testb   %al, %al
        jz      puts_done
        call    putc
        jmp     puts_next
puts_done:
        popw    %ax
        ret

# putc: print %al on COM1 once the transmitter is empty.
putc:
        pushw   %dx
        pushw   %ax
        movw    $COM1 + 5, %dx
putc_wait:
        inb     %dx, %al
        testb   $0x20, %al
        jz      putc_wait
        popw    %ax
        movw    $COM1, %dx
        outb    %al, %dx
        popw    %dx
        ret

text_ready:     .asciz  "READY\r\n"
text_read:      .asciz  "READ\r\n"
text_value:     .asciz  "VALUE "
text_mce:       .asciz  "MCE mcg="
text_status:    .asciz  " status="
text_addr:      .asciz  " addr="
text_ao:        .asciz  " AO\r\n"
text_ar:        .asciz  " AR\r\n"
text_crlf:      .asciz  "\r\n"

        .org    0xfff0, 0xf4
reset_vector:
        ljmp    $0xf000, $start
        .org    0x10000, 0xf4
