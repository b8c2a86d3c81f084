#include "huge_buffer.h"

#include <new>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define PE_HAVE_MMAP 1
#endif

namespace pe {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}

HugeBuffer::HugeBuffer(size_t bytes, PageSize pages) : size_(bytes) {
    if (bytes == 0) return;
#ifdef PE_HAVE_MMAP
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t length = (bytes + page - 1) / page * page;
    // Over-map by one huge page, keep the 2 MB-aligned part, give the rest back: a huge page can
    // only back an aligned 2 MB of the mapping.
    const size_t slack = length >= kHugePage && pages == PageSize::Huge ? kHugePage : 0;
    void* p = mmap(nullptr, length + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    auto* base = static_cast<uint8_t*>(p);
    uint8_t* start = base;
    if (slack) {
        start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) / kHugePage * kHugePage);
        if (start > base) munmap(base, size_t(start - base));
        const size_t tail = size_t(base + length + slack - (start + length));
        if (tail) munmap(start + length, tail);
    }
#ifdef MADV_HUGEPAGE
    if (slack) madvise(start, length, MADV_HUGEPAGE);  // advice: refused or ignored, the pages stay small
#endif
#ifdef MADV_NOHUGEPAGE
    if (pages == PageSize::Small) madvise(start, length, MADV_NOHUGEPAGE);
#endif
    data_ = start;
    mapped_ = length;
#else
    data_ = new uint8_t[bytes]();
#endif
}

void HugeBuffer::release() {
#ifdef PE_HAVE_MMAP
    if (data_ && mapped_) munmap(data_, mapped_);
#else
    delete[] data_;
#endif
    data_ = nullptr;
    size_ = mapped_ = 0;
}

HugeBuffer::~HugeBuffer() { release(); }

HugeBuffer::HugeBuffer(HugeBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HugeBuffer& HugeBuffer::operator=(HugeBuffer&& other) noexcept {
    if (this != &other) {
        release();
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        mapped_ = std::exchange(other.mapped_, 0);
    }
    return *this;
}

}  // namespace pe
