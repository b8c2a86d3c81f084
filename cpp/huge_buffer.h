// Memory for what the engine makes and then streams through: the repacked weight matrices (and the
// bandwidth probe that stands for them). Anonymous pages, 2 MB-aligned and offered to the kernel as
// transparent huge pages where the OS has them (Linux madvise(MADV_HUGEPAGE)): one TLB entry covers
// 2 MB instead of 4 KB, and a matrix-vector product's streams over hundreds of MB read faster (a
// 1.1B Q4_K_M generation ~4% here). Where huge pages are off or unknown it is plain memory; buffers
// under 2 MB are never aligned for them.
//
// Either way the pages are zero-filled by the OS on first touch: making a buffer costs no time, and
// its memory is taken as it is written. The KV caches (PageSize::Small) rely on that: a sequence's
// cache holds every position of its context, but a short conversation touches a few of its pages.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pe {

// Small: 4 KB pages (huge pages refused where the OS would give them unasked), taken one by one as
// they are first written; for buffers written piecemeal across their length, as a KV cache's layers
// and heads are.
enum class PageSize { Huge, Small };

class HugeBuffer {
public:
    HugeBuffer() = default;
    // Zero-filled on first touch; throws std::bad_alloc.
    explicit HugeBuffer(size_t bytes, PageSize pages = PageSize::Huge);
    ~HugeBuffer();
    HugeBuffer(HugeBuffer&& other) noexcept;
    HugeBuffer& operator=(HugeBuffer&& other) noexcept;
    HugeBuffer(const HugeBuffer&) = delete;
    HugeBuffer& operator=(const HugeBuffer&) = delete;

    uint8_t* data() { return data_; }
    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    void release();
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
    size_t mapped_ = 0;  // the bytes to unmap (size_ rounded up to a page), or 0 for new[] memory
};

}  // namespace pe
