"""Go 1.19's ``sort.Sort`` (pattern-defeating quicksort), ported exactly.

etcd sorts Range results with ``sort.Sort``/``sort.Sort(sort.Reverse(..))``,
which is not stable: the order of elements with equal sort keys (same
version, same create revision, same value...) is whatever Go's algorithm
produces. The etcd 3.4.23 we match is built with Go 1.19, so reproducing the
tie order means running the same algorithm. ``go_sort`` does that; it only
falls back to Python's ``sorted`` when the result is provably identical
(no equal keys, or at most 12 elements, where Go uses stable insertion sort).
"""
from __future__ import annotations

from typing import Any, Callable, List

_M64 = (1 << 64) - 1


def go_sort(items: List[Any], key: Callable[[Any], Any], reverse: bool = False) -> List[Any]:
    """Return ``items`` ordered as Go's ``sort.Sort`` would order them, for
    ``Less(i, j) = key(i) < key(j)`` (or its ``sort.Reverse``)."""
    n = len(items)
    if n <= 1:
        return list(items)
    keys = [key(x) for x in items]
    if n <= 12 or len(set(keys)) == n:
        # insertion sort (n <= 12) is stable, and without ties any sort agrees;
        # Python's sort is stable also with reverse=True, like insertion sort
        # with the reversed Less.
        order = sorted(range(n), key=keys.__getitem__, reverse=reverse)
        return [items[i] for i in order]
    data = list(zip(keys, items))
    _Sorter(data, reverse).sort()
    return [x for _, x in data]


class _Sorter:
    __slots__ = ("d", "rev")

    def __init__(self, data, reverse):
        self.d = data
        self.rev = reverse

    def less(self, i, j):
        d = self.d
        if self.rev:
            return d[j][0] < d[i][0]
        return d[i][0] < d[j][0]

    def swap(self, i, j):
        d = self.d
        d[i], d[j] = d[j], d[i]

    def sort(self):
        n = len(self.d)
        self.pdqsort(0, n, n.bit_length())

    def insertion_sort(self, a, b):
        less, swap = self.less, self.swap
        for i in range(a + 1, b):
            j = i
            while j > a and less(j, j - 1):
                swap(j, j - 1)
                j -= 1

    def sift_down(self, lo, hi, first):
        less, swap = self.less, self.swap
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and less(first + child, first + child + 1):
                child += 1
            if not less(first + root, first + child):
                return
            swap(first + root, first + child)
            root = child

    def heap_sort(self, a, b):
        first = a
        lo = 0
        hi = b - a
        for i in range((hi - 1) // 2, -1, -1):
            self.sift_down(i, hi, first)
        for i in range(hi - 1, -1, -1):
            self.swap(first, first + i)
            self.sift_down(lo, i, first)

    def pdqsort(self, a, b, limit):
        max_insertion = 12
        was_balanced = True
        was_partitioned = True
        while True:
            length = b - a
            if length <= max_insertion:
                self.insertion_sort(a, b)
                return
            if limit == 0:
                self.heap_sort(a, b)
                return
            if not was_balanced:
                self.break_patterns(a, b)
                limit -= 1
            pivot, hint = self.choose_pivot(a, b)
            if hint == 2:  # decreasing
                self.reverse_range(a, b)
                pivot = (b - 1) - (pivot - a)
                hint = 1
            if was_balanced and was_partitioned and hint == 1:
                if self.partial_insertion_sort(a, b):
                    return
            if a > 0 and not self.less(a - 1, pivot):
                mid = self.partition_equal(a, b, pivot)
                a = mid
                continue
            mid, already = self.partition(a, b, pivot)
            was_partitioned = already
            left_len, right_len = mid - a, b - mid
            balance_threshold = length // 8
            if left_len < right_len:
                was_balanced = left_len >= balance_threshold
                self.pdqsort(a, mid, limit)
                a = mid + 1
            else:
                was_balanced = right_len >= balance_threshold
                self.pdqsort(mid + 1, b, limit)
                b = mid

    def partition(self, a, b, pivot):
        less, swap = self.less, self.swap
        swap(a, pivot)
        i, j = a + 1, b - 1
        while i <= j and less(i, a):
            i += 1
        while i <= j and not less(j, a):
            j -= 1
        if i > j:
            swap(j, a)
            return j, True
        swap(i, j)
        i += 1
        j -= 1
        while True:
            while i <= j and less(i, a):
                i += 1
            while i <= j and not less(j, a):
                j -= 1
            if i > j:
                break
            swap(i, j)
            i += 1
            j -= 1
        swap(j, a)
        return j, False

    def partition_equal(self, a, b, pivot):
        less, swap = self.less, self.swap
        swap(a, pivot)
        i, j = a + 1, b - 1
        while True:
            while i <= j and not less(a, i):
                i += 1
            while i <= j and less(a, j):
                j -= 1
            if i > j:
                break
            swap(i, j)
            i += 1
            j -= 1
        return i

    def partial_insertion_sort(self, a, b):
        less, swap = self.less, self.swap
        max_steps = 5
        shortest_shifting = 50
        i = a + 1
        for _ in range(max_steps):
            while i < b and not less(i, i - 1):
                i += 1
            if i == b:
                return True
            if b - a < shortest_shifting:
                return False
            swap(i, i - 1)
            if i - a >= 2:
                j = i - 1
                while j >= 1:
                    if not less(j, j - 1):
                        break
                    swap(j, j - 1)
                    j -= 1
            if b - i >= 2:
                j = i + 1
                while j < b:
                    if not less(j, j - 1):
                        break
                    swap(j, j - 1)
                    j += 1
        return False

    def break_patterns(self, a, b):
        length = b - a
        if length >= 8:
            r = length & _M64
            modulus = 1 << length.bit_length()
            for idx in range(a + (length // 4) * 2 - 1, a + (length // 4) * 2 + 2):
                r ^= (r << 13) & _M64
                r ^= r >> 17
                r ^= (r << 5) & _M64
                other = r & (modulus - 1)
                if other >= length:
                    other -= length
                self.swap(idx, a + other)

    def choose_pivot(self, a, b):
        shortest_ninther = 50
        max_swaps = 4 * 3
        l = b - a
        swaps = [0]
        i = a + l // 4 * 1
        j = a + l // 4 * 2
        k = a + l // 4 * 3
        if l >= 8:
            if l >= shortest_ninther:
                i = self.median(i - 1, i, i + 1, swaps)
                j = self.median(j - 1, j, j + 1, swaps)
                k = self.median(k - 1, k, k + 1, swaps)
            j = self.median(i, j, k, swaps)
        if swaps[0] == 0:
            return j, 1  # increasing
        if swaps[0] == max_swaps:
            return j, 2  # decreasing
        return j, 0

    def order2(self, a, b, swaps):
        if self.less(b, a):
            swaps[0] += 1
            return b, a
        return a, b

    def median(self, a, b, c, swaps):
        a, b = self.order2(a, b, swaps)
        b, c = self.order2(b, c, swaps)
        a, b = self.order2(a, b, swaps)
        return b

    def reverse_range(self, a, b):
        i, j = a, b - 1
        while i < j:
            self.swap(i, j)
            i += 1
            j -= 1
