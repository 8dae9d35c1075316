//! Something due at a time, for a min-heap (`BinaryHeap<Reverse<Due<…>>>`): ordered by its time,
//! then by a sequence number that keeps equal times in insertion order; the item itself takes
//! no part in the order. The impairment proxy's datagrams and the frame clock's tickers use it.

pub struct Due<I, T> {
    pub at: I,
    pub order: u64,
    pub item: T,
}

impl<I: Ord, T> PartialEq for Due<I, T> {
    fn eq(&self, o: &Self) -> bool {
        (&self.at, self.order) == (&o.at, o.order)
    }
}
impl<I: Ord, T> Eq for Due<I, T> {}
impl<I: Ord, T> PartialOrd for Due<I, T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<I: Ord, T> Ord for Due<I, T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (&self.at, self.order).cmp(&(&o.at, o.order))
    }
}
