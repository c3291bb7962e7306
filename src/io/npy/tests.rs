use super::*;

fn with_header(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
        if fortran { "True" } else { "False" }
    );
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&[1, 0]);
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn round_trips_f32() {
    let d = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.0];
    let m = parse_matrix(&to_bytes(&d, 2, 3), Path::new("x")).unwrap();
    assert_eq!((m.rows, m.cols), (2, 3));
    assert_eq!(m.data, d);
}

#[test]
fn reads_half_types_and_f64() {
    let h: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(
        parse_matrix(&with_header("<V2", "(1, 2)", false, &h), Path::new("x"))
            .unwrap()
            .data,
        [1.5, -2.0]
    );
    let h: Vec<u8> = [0.5f32, 4.0]
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(
        parse_matrix(&with_header("<f2", "(2, 1)", false, &h), Path::new("x"))
            .unwrap()
            .data,
        [0.5, 4.0]
    );
    let h: Vec<u8> = [0.25f64, 1e3]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        parse_matrix(&with_header("<f8", "(1, 2)", false, &h), Path::new("x"))
            .unwrap()
            .data,
        [0.25, 1000.0]
    );
    let h: Vec<u8> = [1e300f64].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(matches!(
        parse_matrix(&with_header("<f8", "(1, 1)", false, &h), Path::new("x")),
        Err(NpyError::OutOfRange { .. })
    ));
}

#[test]
fn fortran_order_is_transposed() {
    let h: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let m = parse_matrix(&with_header("<f4", "(2, 3)", true, &h), Path::new("x")).unwrap();
    assert_eq!(m.data, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
}

#[test]
fn rejects_bad_inputs() {
    let p = Path::new("x");
    assert!(matches!(
        parse_matrix(b"hello", p),
        Err(NpyError::Format { .. })
    ));
    assert!(matches!(
        parse_matrix(&with_header("<i4", "(1, 1)", false, &[0; 4]), p),
        Err(NpyError::Dtype { .. })
    ));
    assert!(matches!(
        parse_matrix(&with_header("<f4", "(4,)", false, &[0; 16]), p),
        Err(NpyError::Rank { .. })
    ));
    assert!(matches!(
        parse_matrix(&with_header("<f4", "(2, 2)", false, &[0; 12]), p),
        Err(NpyError::Truncated { .. })
    ));
}

#[test]
fn layer_stacks_round_trip_and_other_ranks_are_refused() {
    let dir = std::env::temp_dir().join(format!("capmoe-npy-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32 * 0.5).collect();
    let f = dir.join("f.npy");
    std::fs::write(&f, layers_to_bytes(&data, 2, 3, 4).unwrap()).unwrap();
    let (layers, m) = read_layers(&f).unwrap();
    assert_eq!((layers, m.rows, m.cols), (2, 6, 4));
    assert_eq!(m.data, data);
    // A 3-D file is not a matrix, and a matrix is not a stack.
    let e = read_matrix(&f).unwrap_err();
    assert!(e.to_string().contains("expected a 2-D"), "{e}");
    let g = dir.join("g.npy");
    std::fs::write(&g, to_bytes(&data, 6, 4)).unwrap();
    let e = read_layers(&g).unwrap_err();
    assert!(e.to_string().contains("expected a 3-D"), "{e}");
    assert!(layers_to_bytes(&data, 2, 3, 5).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
