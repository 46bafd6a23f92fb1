//! Swapping the backend of a live device (`Block::swap_backend`).

use super::*;

/// A file of `size` bytes whose first sector is `byte`.
fn file_with(size: u64, byte: u8) -> TempFile {
    let f = TempFile::new(size);
    let mut content = std::fs::read(&f.0).unwrap();
    content[..512].fill(byte);
    std::fs::write(&f.0, content).unwrap();
    f
}

/// Reads sector 0 through the event loop (queue kick → device thread work) and returns its
/// first byte.
fn read_sector0(
    r: &mut Rig,
    em: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
) -> u8 {
    r.fill(DATA, 512, 0);
    let (head, s) = r.request(VIRTIO_BLK_T_IN, 0, &[TestDesc::w(DATA, 512)]);
    reg_w(&mut r.t, 0x50, 0);
    let mut used = None;
    for _ in 0..50 {
        em.run_with_timeout(100).unwrap();
        if let Some(u) = r.drv.pop_used() {
            used = Some(u);
            break;
        }
    }
    assert_eq!(
        used.map(|u| u.0),
        Some(u32::from(head)),
        "request completed"
    );
    assert_eq!(r.drv.byte(s), S_OK);
    r.bytes(DATA, 1)[0]
}

#[test]
fn swap_serves_the_new_backing_and_signals_a_config_change() {
    let a = file_with(MIB, 0xaa);
    let b = file_with(2 * MIB, 0xbb);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    let mut subscribed = None;
    let mut r = rig_with(file_backend(&a), true, |blk| subscribed = Some(blk.clone()));
    em.add_subscriber(subscribed.unwrap());
    em.run_with_timeout(100).unwrap(); // activation: queue and backend fds registered
    assert_eq!(read_sector0(&mut r, &mut em), 0xaa);
    let gen = reg_r(&mut r.t, 0xfc);
    let _ = reg_r(&mut r.t, 0x60);
    reg_w(&mut r.t, 0x64, 3); // ack what is pending

    let cap = r
        .block
        .lock()
        .unwrap()
        .swap_backend(file_backend(&b))
        .unwrap();
    assert_eq!(cap, 2 * MIB);
    assert_eq!(r.capacity(), 2 * MIB / 512);
    assert_eq!(reg_r(&mut r.t, 0xfc), gen + 1, "config generation moved");
    assert_eq!(reg_r(&mut r.t, 0x60) & 2, 2, "config-change interrupt");
    // The device thread swaps the registrations (old notifier out, new one in), then serves the
    // queue from the new backing, including its larger size.
    assert_eq!(read_sector0(&mut r, &mut em), 0xbb);
    assert!(r.block.lock().unwrap().retired.is_empty());
    r.fill(DATA, 512, 0x5e);
    let (head, s) = r.request(VIRTIO_BLK_T_OUT, 3000, &[TestDesc::r(DATA, 512)]);
    reg_w(&mut r.t, 0x50, 0);
    let mut used = None;
    for _ in 0..50 {
        em.run_with_timeout(100).unwrap();
        if let Some(u) = r.drv.pop_used() {
            used = Some(u);
            break;
        }
    }
    assert_eq!(used.map(|u| u.0), Some(u32::from(head)));
    assert_eq!(r.drv.byte(s), S_OK);
    assert_eq!(
        std::fs::read(&b.0).unwrap()[3000 * 512..3001 * 512],
        [0x5e; 512]
    );
    assert_eq!(
        std::fs::read(&a.0).unwrap().len() as u64,
        MIB,
        "the old file untouched"
    );

    // Swapping twice before the device thread runs leaves one registration to undo.
    let c = file_with(MIB, 0xcc);
    let d = file_with(MIB, 0xdd);
    r.block
        .lock()
        .unwrap()
        .swap_backend(file_backend(&c))
        .unwrap();
    r.block
        .lock()
        .unwrap()
        .swap_backend(file_backend(&d))
        .unwrap();
    assert_eq!(read_sector0(&mut r, &mut em), 0xdd);
}

#[test]
fn requests_in_flight_complete_on_the_old_backing_before_a_swap() {
    let a = file_with(MIB, 0xaa);
    let b = file_with(MIB, 0xbb);
    let mut r = rig(file_backend(&a));
    let mut heads = Vec::new();
    for i in 0..4u64 {
        r.fill(DATA + i * 4096, 512, 0);
        heads.push(
            r.request(VIRTIO_BLK_T_IN, 0, &[TestDesc::w(DATA + i * 4096, 512)])
                .0,
        );
    }
    r.block.lock().unwrap().process_queue(); // submitted to the old backend
    r.block
        .lock()
        .unwrap()
        .swap_backend(file_backend(&b))
        .unwrap();
    let mut used = Vec::new();
    while let Some(u) = r.drv.pop_used() {
        used.push(u.0 as u16);
    }
    assert_eq!(used, heads, "every popped request completed by the swap");
    for i in 0..4u64 {
        assert_eq!(
            r.bytes(DATA + i * 4096, 1)[0],
            0xaa,
            "read from the old backing"
        );
    }
    assert_eq!(r.run(VIRTIO_BLK_T_IN, 0, &[TestDesc::w(DATA, 512)]).0, S_OK);
    assert_eq!(r.bytes(DATA, 1)[0], 0xbb);
}

/// A backend with 4 KiB logical blocks.
struct BigBlocks(NullDisk);

impl DiskBackend for BigBlocks {
    fn info(&self) -> DiskInfo {
        DiskInfo {
            logical_block_size: 4096,
            ..self.0.info()
        }
    }
    fn refresh(&mut self) -> io::Result<DiskInfo> {
        Ok(self.info())
    }
    fn queue_depth(&self) -> usize {
        self.0.queue_depth()
    }
    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        self.0.submit(req)
    }
    fn kick(&mut self) -> io::Result<()> {
        self.0.kick()
    }
    fn notifier(&self) -> Option<RawFd> {
        self.0.notifier()
    }
    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        self.0.poll_completions(out)
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

#[test]
fn a_backing_with_other_block_size_is_refused_and_the_old_one_stays() {
    let a = file_with(MIB, 0xaa);
    let mut r = rig(file_backend(&a));
    let gen = reg_r(&mut r.t, 0xfc);
    let err = r
        .block
        .lock()
        .unwrap()
        .swap_backend(Box::new(BigBlocks(NullDisk::new(MIB, 8))))
        .unwrap_err();
    assert!(err.to_string().contains("4096-byte blocks"), "{err}");
    assert_eq!(reg_r(&mut r.t, 0xfc), gen, "no config change");
    assert_eq!(r.run(VIRTIO_BLK_T_IN, 0, &[TestDesc::w(DATA, 512)]).0, S_OK);
    assert_eq!(r.bytes(DATA, 1)[0], 0xaa);
}

#[test]
fn a_swap_with_a_different_queue_depth_resizes_the_slots() {
    let a = file_with(MIB, 0xaa);
    let mut r = rig(file_backend(&a));
    r.block
        .lock()
        .unwrap()
        .swap_backend(Box::new(NullDisk::new(2 * MIB, 3)))
        .unwrap();
    {
        let b = r.block.lock().unwrap();
        assert_eq!(b.slots.len(), 3);
        assert_eq!(b.free_slots.len(), 3);
    }
    for i in 0..6u64 {
        r.request(VIRTIO_BLK_T_IN, i, &[TestDesc::w(DATA + i * 512, 512)]);
    }
    assert_eq!(r.complete(6).len(), 6);
}
