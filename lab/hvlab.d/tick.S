# tick.S: boot sector of the hypervisor lab's test guest.
#
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# The BIOS loads these 512 bytes at 0000:7c00 and jumps here. The guest then prints
#     tick 0, tick 1, tick 2, ...
# on COM1, one line about every half second, forever. The counter lives in guest RAM (the
# word `counter` below), so after a live migration the destination carries on from the
# source's number: a first destination line other than "tick 0" proves the RAM moved.
#
# Between lines the CPU sleeps in `hlt` and wakes on the BIOS timer interrupt (IRQ0, 18.2 Hz,
# which advances the BIOS tick count at 0040:006c), so an idle guest costs little host CPU.
#
# Build (lab/hvlab does this when it builds the hypervisor image):
#     as --32 -o tick.o tick.S
#     ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o tick.bin tick.o
# and tick.bin padded to 1 MiB is the guest's raw, read-only disk.

        .code16
        .text
        .globl  _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        ljmp    $0, $start              # some BIOSes enter with CS=07c0: normalise CS:IP

start:
        call    uart_init
        sti

main_loop:
        movw    $text_tick, %si
        call    puts
        movw    counter, %ax
        call    put_decimal
        movw    $text_crlf, %si
        call    puts
        incw    counter
        movw    $9, %cx                 # 9 BIOS ticks of 54.9 ms: about 0.5 s
        call    sleep_ticks
        jmp     main_loop

# uart_init: COM1 at 115200 8N1, FIFO on, DTR/RTS set.
uart_init:
        movw    $0x3fb, %dx             # line control: DLAB=1
        movb    $0x80, %al
        outb    %al, %dx
        movw    $0x3f8, %dx             # divisor low byte: 1 (115200 baud)
        movb    $0x01, %al
        outb    %al, %dx
        movw    $0x3f9, %dx             # divisor high byte
        xorb    %al, %al
        outb    %al, %dx
        movw    $0x3fb, %dx             # 8 data bits, no parity, 1 stop bit, DLAB=0
        movb    $0x03, %al
        outb    %al, %dx
        movw    $0x3fa, %dx             # FIFO enable and clear
        movb    $0xc7, %al
        outb    %al, %dx
        movw    $0x3fc, %dx             # modem control: DTR, RTS
        movb    $0x03, %al
        outb    %al, %dx
        ret

# putc: write the byte in %al to COM1 once the transmit holding register is empty.
putc:
        pushw   %dx
        pushw   %ax
        movw    $0x3fd, %dx             # line status register
1:      inb     %dx, %al
        testb   $0x20, %al              # THR empty?
        jz      1b
        popw    %ax
        movw    $0x3f8, %dx
        outb    %al, %dx
        popw    %dx
        ret

# puts: write the NUL-terminated string at %ds:%si.
puts:
        cld
1:      lodsb
        testb   %al, %al
        jz      2f
        call    putc
        jmp     1b
2:      ret

# put_decimal: write the unsigned 16-bit number in %ax in decimal.
put_decimal:
        movw    $10, %bx
        xorw    %cx, %cx
1:      xorw    %dx, %dx
        divw    %bx                     # %ax = quotient, %dx = next digit
        pushw   %dx
        incw    %cx
        testw   %ax, %ax
        jnz     1b
2:      popw    %ax
        addb    $'0', %al
        call    putc
        loop    2b
        ret

# sleep_ticks: halt until the BIOS tick count (0040:006c) has advanced by %cx.
sleep_ticks:
        movw    0x46c, %bx
1:      hlt
        movw    0x46c, %ax
        subw    %bx, %ax
        cmpw    %cx, %ax
        jb      1b
        ret

text_tick:
        .asciz  "tick "
text_crlf:
        .asciz  "\r\n"
        .balign 2
counter:
        .word   0

        .org    510
        .word   0xaa55                  # boot signature
