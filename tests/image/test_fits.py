"""Tests for jaxdiff.image.fits: lossless Exposure round trips, atomic writes, LSST files, plain FITS."""

import os
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning, Sip

from jaxdiff import Exposure, FilterLabel, GaussianPsf, GridPsf, ImagePsf, MaskedImage, MoffatPsf, PhotoCalib
from jaxdiff.image.fits import exposureFromFits, readExposure, readImageArray, writeExposure


def _shared_data():
    candidates = [Path(__file__).resolve().parents[2].parent / "shared" / "data"]
    if os.environ.get("JAXDIFF_SHARED"):
        candidates.insert(0, Path(os.environ["JAXDIFF_SHARED"]) / "data")
    return next((c for c in candidates if c.is_dir()), None)


DATA = _shared_data()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data dir not found (set JAXDIFF_SHARED)")

X0, Y0 = 17, -4


def tan_wcs(sip=False):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.123456789, 2.2345678901]
    w.wcs.crpix = [40.25, 31.5]  # PARENT pixel coordinates (FITS 1-based)
    w.wcs.cd = np.array([[-5.5e-5, 1.2e-6], [1.1e-6, 5.4e-5]])
    if sip:
        a, b = np.zeros((4, 4)), np.zeros((4, 4))
        a[2, 0], a[0, 2], a[1, 2] = 2.5e-6, -1.5e-6, 3e-8
        b[1, 1], b[0, 3] = 4e-6, -2e-8
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def grid_psf():
    xs, ys = np.array([0.0, 50.0, 100.0]), np.array([10.0, 60.0])
    sig = np.array([[1.5, 1.8, 2.1], [1.6, 2.0, 2.4]])
    yy, xx = np.mgrid[-5:6, -5:6]
    imgs = np.exp(-0.5 * (xx**2 + yy**2)[None, None] / sig[..., None, None] ** 2)
    return GridPsf(imgs, xs, ys)


PSFS = {
    "none": lambda: None,
    "gauss": lambda: GaussianPsf(15, 13, 1.2345678901234567e-05 * 1.7e5),
    "moffat": lambda: MoffatPsf(21, 21, 3.3333333333333335, 2.7182818284590451),
    "image": lambda: ImagePsf(np.random.default_rng(3).random((9, 11)) + 0.1, averagePosition=(12.5, -3.25)),
    "grid": grid_psf,
}


def make_exposure(dtype=np.float32, psf=None, wcs=None, shape=(40, 60), metadata=None):
    rng = np.random.default_rng(42)
    img = rng.normal(100.0, 10.0, shape).astype(dtype)
    img[3, 4] = np.float32(1) / np.float32(3)  # a value that must survive bit-exactly
    var = (rng.random(shape) + 1.0).astype(dtype)
    mi = MaskedImage(img, variance=var, xy0=(X0, Y0))
    bit = mi.mask.addMaskPlane("FAKE_SOURCE")
    mi.mask.array[5, 6] = 1 << bit
    mi.mask.array[7, 8] = mi.mask.getPlaneBitMask(["SAT", "NO_DATA"])
    mi.mask.array[0, 0] = np.int32(-(2**31))  # bit 31 survives the int32 round trip
    md = metadata if metadata is not None else {"EXPTIME": 30.0, "OBSERVER": "Vera", "long_key_name": 7}
    return Exposure(
        mi,
        psf=psf,
        wcs=wcs,
        photoCalib=PhotoCalib(0.123456789012345678e-3, 1.1e-7),
        filterLabel=FilterLabel("r", "r_03"),
        metadata=md,
    )


def assert_same_pixels(a, b):
    for name in ("image", "mask", "variance"):
        pa, pb = np.asarray(getattr(a, name).array), np.asarray(getattr(b, name).array)
        assert pb.dtype == pa.dtype, name
        assert pb.dtype.isnative
        np.testing.assert_array_equal(pb, pa, err_msg=name)
    assert b.getXY0() == a.getXY0()
    assert b.mask.getMaskPlaneDict() == a.mask.getMaskPlaneDict()


PIXELS = [(0, 0), (59, 39), (13, 27), (40, 2)]  # (col, row) array positions


def assert_same_wcs(w1, w2, x0=X0, y0=Y0):
    for col, row in PIXELS:
        c1, c2 = w1.pixel_to_world(x0 + col, y0 + row), w2.pixel_to_world(x0 + col, y0 + row)
        assert abs(c1.ra.deg - c2.ra.deg) < 1e-9 and abs(c1.dec.deg - c2.dec.deg) < 1e-9


def header_wcs(path, ext=0):
    """The array-grid WCS in HDU ``ext`` of a file, as any FITS reader sees it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.getheader(path, ext))


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("psf_kind", list(PSFS))
def test_round_trip_lossless(tmp_path, dtype, psf_kind):
    psf = PSFS[psf_kind]()
    exp = make_exposure(dtype, psf=psf, wcs=tan_wcs())
    path = tmp_path / "exp.fits"
    writeExposure(exp, path)
    back = readExposure(path)

    assert_same_pixels(exp, back)
    assert back.getPhotoCalib() == exp.getPhotoCalib()
    assert back.getFilter() == FilterLabel("r", "r_03")
    assert_same_wcs(exp.wcs, back.wcs)
    for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "PC1_1", "PC2_1", "CDELT1", "CDELT2"):
        assert back.wcs.to_header()[key] == exp.wcs.to_header()[key], key
    assert back.wcs.to_header()["CRPIX1"] == pytest.approx(exp.wcs.to_header()["CRPIX1"], abs=1e-12)
    md = back.getMetadata()
    assert isinstance(md, fits.Header)
    assert md["EXPTIME"] == 30.0 and md["OBSERVER"] == "Vera" and md["long_key_name"] == 7
    assert "PHOTOCALIB_MEAN" not in md and "NAXIS" not in md and "FILTER" not in md

    if psf is None:
        assert back.getPsf() is None
        return
    assert type(back.getPsf()) is type(psf)
    assert back.getPsf().getDimensions() == psf.getDimensions()
    for pos in [None, (0.0, 10.0), (25.0, 35.0), (100.0, 60.0), (70.0, 41.0)]:
        np.testing.assert_array_equal(back.psf.computeKernelArray(pos), psf.computeKernelArray(pos))
    if psf_kind == "gauss":
        assert back.psf.sigma == psf.sigma  # bit-exact float card
    if psf_kind == "image":
        np.testing.assert_array_equal(back.psf.array, psf.array)
        assert back.psf.getAveragePosition() == (12.5, -3.25)
    if psf_kind == "grid":
        np.testing.assert_array_equal(back.psf.images, psf.images)
        np.testing.assert_array_equal(back.psf.xCenters, psf.xCenters)
        np.testing.assert_array_equal(back.psf.yCenters, psf.yCenters)


def test_file_layout_follows_lsst(tmp_path):
    path = tmp_path / "exp.fits"
    exp = make_exposure(psf=grid_psf(), wcs=tan_wcs())
    writeExposure(exp, path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF", "PSF_GRID"]
        assert hdul[0].data is None
        for name in ("IMAGE", "MASK", "VARIANCE"):
            hdr = hdul[name].header
            assert hdr["EXTTYPE"] == name
            assert (hdr["LTV1"], hdr["LTV2"]) == (-X0, -Y0)
            assert (hdr["CRVAL1A"], hdr["CRVAL2A"], hdr["CTYPE1A"]) == (X0, Y0, "LINEAR")
            assert hdr["CRPIX1"] == pytest.approx(40.25 - X0) and hdr["CRPIX2"] == pytest.approx(31.5 - Y0)
        assert hdul["MASK"].data.dtype == np.dtype(">i4")
        mp = {k[3:]: v for k, v in hdul["MASK"].header.items() if k.startswith("MP_")}
        assert mp == exp.mask.getMaskPlaneDict() and mp["FAKE_SOURCE"] == 9
        assert hdul["PSF"].header["PSFTYPE"] == "GridPsf" and hdul["PSF"].data.shape == (2, 3, 11, 11)
        assert hdul[0].header["BAND"] == "r" and hdul[0].header["FILTER"] == "r_03"
        assert hdul[0].header["PHOTOCALIB_MEAN"] == exp.photoCalib.getCalibrationMean()


@pytest.mark.parametrize("sip", [False, True])
def test_wcs_convention_parent_vs_array(tmp_path, sip):
    """exposure.wcs at PARENT (x0+col, y0+row) == the file's array-grid WCS at (col, row)."""
    exp = make_exposure(wcs=tan_wcs(sip))
    path = tmp_path / "exp.fits"
    writeExposure(exp, path)
    back = readExposure(path)
    fw = header_wcs(path, "IMAGE")
    assert fw.sip is not None if sip else fw.sip is None
    for e in (exp, back):
        for col, row in PIXELS:
            a = e.wcs.pixel_to_world(X0 + col, Y0 + row)
            b = fw.pixel_to_world(col, row)
            assert a.separation(b).deg < 1e-9
    assert_same_wcs(exp.wcs, back.wcs)
    if sip:
        np.testing.assert_allclose(back.wcs.sip.a, exp.wcs.sip.a, rtol=1e-12, atol=0)
        np.testing.assert_allclose(back.wcs.sip.b, exp.wcs.sip.b, rtol=1e-12, atol=0)


def test_round_trip_jax_arrays_and_defaults(tmp_path):
    img = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    exp = Exposure(MaskedImage(img, variance=img + 1))
    path = tmp_path / "plain.fits"
    writeExposure(exp, path)
    back = readExposure(path)
    np.testing.assert_array_equal(back.image.array, np.asarray(img))
    np.testing.assert_array_equal(back.variance.array, np.asarray(img) + 1)
    assert back.getXY0() == (0, 0) and back.wcs is None and back.psf is None
    assert back.photoCalib is None and back.filter is None and len(back.metadata) == 0


def test_metadata_header_round_trip(tmp_path):
    md = fits.Header()
    md["EXPTIME"] = (30.5, "seconds")
    md["HIERARCH ESO DET CHIP NAME"] = "CCD-1"
    md["NAXIS1"] = 99  # structural: skipped
    md["BZERO"] = 32768  # structural: skipped
    md["LONGSTR"] = "x" * 100
    md.add_history("made by a test")
    md.add_comment("a comment")
    exp = make_exposure(metadata=md)
    path = tmp_path / "md.fits"
    writeExposure(exp, path)
    back = readExposure(path).metadata
    assert back["EXPTIME"] == 30.5 and back.comments["EXPTIME"] == "seconds"
    assert back["ESO DET CHIP NAME"] == "CCD-1"
    assert back["LONGSTR"] == "x" * 100
    assert "made by a test" in str(back["HISTORY"]) and "a comment" in str(back["COMMENT"])
    assert "NAXIS1" not in back and "BZERO" not in back


def test_dict_metadata_keys_and_filter_card(tmp_path):
    exp = make_exposure(metadata={"exptime": 12.0, "Mixed_Case_Long": "v", "FILTER": "i_old"})
    exp.setFilter(None)
    writeExposure(exp, tmp_path / "d.fits")
    back = readExposure(tmp_path / "d.fits")
    assert back.metadata["EXPTIME"] == 12.0 and back.metadata["Mixed_Case_Long"] == "v"
    assert back.filter == FilterLabel(None, "i_old") and "FILTER" not in back.metadata


def test_unknown_psf_written_as_image_psf(tmp_path):
    class DoubleGaussianPsf:  # a PSF class fits.py does not know: only computeKernelImage
        def computeKernelImage(self, position=None):
            a, b = GaussianPsf(9, 9, 1.5), GaussianPsf(9, 9, 3.0)
            return a.computeKernelImage(position).array * 0.7 + b.computeKernelImage(position).array * 0.3

    psf = DoubleGaussianPsf()
    with pytest.warns(UserWarning, match="DoubleGaussianPsf .* as an ImagePsf"):
        writeExposure(make_exposure(psf=psf), tmp_path / "c.fits")
    back = readExposure(tmp_path / "c.fits").psf
    assert isinstance(back, ImagePsf) and back.getDimensions() == (9, 9)
    np.testing.assert_allclose(back.computeKernelArray(), psf.computeKernelImage(), rtol=1e-15, atol=1e-17)


def test_bad_metadata_value_leaves_no_file(tmp_path):
    path = tmp_path / "bad.fits"
    with pytest.raises(TypeError, match="BADCARD"):
        writeExposure(make_exposure(metadata={"BADCARD": [1, 2]}), path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="Exposure"):
        writeExposure(np.zeros((3, 3)), path)


# ----------------------------------------------------------------------------------------------
# atomic writes, overwrite
# ----------------------------------------------------------------------------------------------


def _partial_writer(self, fileobj, *args, **kwargs):
    fileobj.write(b"SIMPLE  =  T" + b" " * 5000)  # some bytes reach the disk, then it fails
    raise OSError("disk full (simulated)")


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "exp.fits"
    monkeypatch.setattr(fits.HDUList, "writeto", _partial_writer)
    with pytest.raises(OSError, match="disk full"):
        writeExposure(make_exposure(), path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_target(tmp_path, monkeypatch):
    path = tmp_path / "exp.fits"
    writeExposure(make_exposure(), path)
    before = path.read_bytes()
    monkeypatch.setattr(fits.HDUList, "writeto", _partial_writer)
    with pytest.raises(OSError):
        writeExposure(make_exposure(np.float64), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp.fits"]


def test_atomic_write_failure_at_rename(tmp_path, monkeypatch):
    path = tmp_path / "exp.fits"
    path.write_bytes(b"old contents")

    def boom(src, dst):
        raise PermissionError("rename refused (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(PermissionError):
        writeExposure(make_exposure(), path)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["exp.fits"]


def test_overwrite(tmp_path):
    path = tmp_path / "exp.fits"
    writeExposure(make_exposure(np.float32), str(path))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        writeExposure(make_exposure(np.float64), path, overwrite=False)
    assert path.read_bytes() == before
    writeExposure(make_exposure(np.float64), path)  # default overwrite=True
    assert readExposure(path).dtype == np.float64
    assert Exposure.readFits(path).dtype == np.float64


# ----------------------------------------------------------------------------------------------
# reading other layouts, errors
# ----------------------------------------------------------------------------------------------


def test_read_positional_planes_when_primary_has_data(tmp_path):
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    mask = np.full((4, 5), 3, dtype=np.uint16)
    var = img + 2
    hdr = fits.Header({"LTV1": -3, "LTV2": -8})
    hdul = fits.HDUList([fits.PrimaryHDU(img, header=hdr), fits.ImageHDU(mask), fits.ImageHDU(var)])
    hdul.writeto(tmp_path / "a.fits")
    exp = readExposure(tmp_path / "a.fits")
    np.testing.assert_array_equal(exp.image.array, img)
    np.testing.assert_array_equal(exp.variance.array, var)
    assert exp.mask.array.dtype == np.int32 and exp.mask.array.max() == 3
    assert exp.getXY0() == (3, 8)


def test_read_errors(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column("A", "D", array=[1.0, 2.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    for reader in (readExposure, exposureFromFits, readImageArray):
        with pytest.raises(ValueError, match=r"table\.fits has no image HDU"):
            reader(tmp_path / "table.fits")
    img = np.ones((4, 5), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img, name="IMAGE")]).writeto(tmp_path / "onlyimage.fits")
    with pytest.raises(ValueError, match="no MASK/VARIANCE HDU.*exposureFromFits"):
        readExposure(tmp_path / "onlyimage.fits")
    fits.PrimaryHDU(img).writeto(tmp_path / "plain.fits")
    with pytest.raises(ValueError, match="1 image HDU.*exposureFromFits"):
        readExposure(tmp_path / "plain.fits")


# ----------------------------------------------------------------------------------------------
# exposureFromFits on synthetic files
# ----------------------------------------------------------------------------------------------


def test_exposure_from_fits_ccd_variance(tmp_path):
    data = np.array([[-50, 0, 100], [1000, 30000, 65000]], dtype=np.int32)
    fits.PrimaryHDU(data).writeto(tmp_path / "ccd.fits")
    gain, rn = 2.5, 7.0
    exp = exposureFromFits(tmp_path / "ccd.fits", gain=gain, readNoise=rn, saturation=30000)
    assert exp.dtype == np.float32 and exp.variance.dtype == np.float32
    np.testing.assert_array_equal(exp.image.array, data.astype(np.float32))
    expected = (np.maximum(data, 0) / gain + rn**2 / gain**2).astype(np.float32)
    np.testing.assert_array_equal(exp.variance.array, expected)
    assert exp.variance.array[0, 0] == np.float32(rn**2 / gain**2)  # negative signal: read noise only
    np.testing.assert_array_equal(exp.mask.isSet("SAT"), data >= 30000)
    assert not exp.mask.isSet("NO_DATA").any()
    assert exp.wcs is None and exp.getXY0() == (0, 0)


def test_exposure_from_fits_nan_header_noise_and_wcs(tmp_path):
    data = np.full((6, 7), 10.0)
    data[1, 2], data[4, 5] = np.nan, np.inf
    hdr = tan_wcs().to_header()
    hdr["GAIN"], hdr["RDNOISE"], hdr["SATURATE"] = 4.0, 3.0, 1e9
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=hdr, name="SCI")])
    hdul.writeto(tmp_path / "f.fits")
    exp = exposureFromFits(tmp_path / "f.fits", hdu="SCI")
    assert exp.dtype == np.float64
    bad = ~np.isfinite(data)
    np.testing.assert_array_equal(exp.mask.isSet("NO_DATA"), bad)
    np.testing.assert_array_equal(exp.mask.isSet("BAD"), bad)
    assert np.all(exp.image.array[bad] == 0) and np.all(np.isfinite(exp.image.array))
    good_var = 10.0 / 4.0 + 9.0 / 16.0
    np.testing.assert_array_equal(exp.variance.array, np.full(data.shape, good_var))
    assert exp.wcs is not None and exp.wcs.has_celestial
    assert exp.wcs.pixel_to_world(3, 2).separation(tan_wcs().pixel_to_world(3, 2)).deg < 1e-9
    assert exp.metadata["GAIN"] == 4.0 and "NAXIS1" not in exp.metadata


def test_exposure_from_fits_variance_and_noise_maps(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    sigma = np.linspace(0.5, 2.0, 12, dtype=np.float32).reshape(3, 4)
    fits.PrimaryHDU(data).writeto(tmp_path / "img.fits")
    fits.PrimaryHDU(sigma).writeto(tmp_path / "err.fits")
    exp = exposureFromFits(tmp_path / "img.fits", noise=tmp_path / "err.fits")
    np.testing.assert_array_equal(exp.variance.array, (sigma.astype(np.float64) ** 2).astype(np.float32))
    exp = exposureFromFits(tmp_path / "img.fits", variance=sigma)
    np.testing.assert_array_equal(exp.variance.array, sigma)
    psf = GaussianPsf(5, 5, 1.0)
    exp = exposureFromFits(tmp_path / "img.fits", noise=sigma, psf=psf, photoCalib=PhotoCalib(2.0))
    assert exp.psf is psf and exp.photoCalib == PhotoCalib(2.0)
    np.testing.assert_array_equal(readImageArray(tmp_path / "err.fits"), sigma)


def test_exposure_from_fits_errors(tmp_path):
    fits.PrimaryHDU(np.ones((3, 4), np.float32)).writeto(tmp_path / "img.fits")
    path = tmp_path / "img.fits"
    with pytest.raises(ValueError, match="noise model is needed.*gain="):
        exposureFromFits(path)
    with pytest.raises(ValueError, match="not both"):
        exposureFromFits(path, variance=np.ones((3, 4)), noise=np.ones((3, 4)))
    with pytest.raises(ValueError, match="not both"):
        exposureFromFits(path, variance=np.ones((3, 4)), gain=2.0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        exposureFromFits(path, noise=np.ones((2, 2)))
    with pytest.raises(ValueError, match="positive"):
        exposureFromFits(path, gain=0.0)
    with pytest.raises(ValueError, match="no HDU 5"):
        exposureFromFits(path, gain=1.0, hdu=5)


# ----------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------


@needs_data
def test_read_lsst_hotpants_template(tmp_path):
    exp = readExposure(DATA / "lsst_ipdiffim_hotpants" / "templateMI.fits")
    img, mask, var = (np.asarray(a) for a in exp.getMaskedImage().getArrays())
    assert img.shape == mask.shape == var.shape == (193, 193)
    assert mask.dtype == np.int32 and img.dtype == np.float32 and np.all(mask == 0)
    # README: 9 noiseless Gaussians of flux 10000 each; variance plane = image
    assert img.sum() == pytest.approx(90000.0, rel=0.01)
    assert np.all(var >= 0) and var.max() > 0
    np.testing.assert_array_equal(var, img)
    for x in (32, 96, 160):  # stars on a 3x3 grid at x, y in {32, 96, 160}
        for y in (32, 96, 160):
            assert img[y, x] == img[y - 3 : y + 4, x - 3 : x + 4].max()
    planes = exp.mask.getMaskPlaneDict()
    assert planes["DETECTED_NEGATIVE"] == 6 and planes["EDGE"] == 4  # from the file's MP_ cards
    assert exp.getXY0() == (24, 24)  # CRVAL1A/CRVAL2A of the image HDU
    # LSST file -> jaxdiff file -> same pixels
    writeExposure(exp, tmp_path / "t.fits")
    assert_same_pixels(exp, readExposure(tmp_path / "t.fits"))


@needs_data
def test_read_lsst_hotpants_science():
    exp = readExposure(DATA / "lsst_ipdiffim_hotpants" / "scienceMI.fits")
    var = np.asarray(exp.variance.array)
    assert var.shape == (193, 193) and np.all(var > 0)
    # README: variance = 100 + source counts, range 100 - 319.6
    assert var.min() == pytest.approx(100.0) and var.max() == pytest.approx(319.6, abs=0.05)
    img = np.asarray(exp.image.array)
    np.testing.assert_array_equal(img, np.round(img))  # integer-valued noisy image


@needs_data
def test_exposure_from_fits_properimage():
    path = DATA / "properimage_eso085" / "aligned_eso085-030-004.fit"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy's FITSFixedWarning ('datfix') must be silenced
        exp = exposureFromFits(path, gain=1, readNoise=5, saturation=65000)
    assert exp.getDimensions() == (1024, 682)
    raw = readImageArray(path)
    assert raw.dtype == np.uint16 and exp.dtype == np.float32
    np.testing.assert_array_equal(exp.variance.array, (np.maximum(raw, 0) / 1.0 + 25.0).astype(np.float32))
    assert exp.mask.isSet("SAT").sum() == 98  # README: 98 pixels >= 65000
    assert (exp.wcs is not None) == header_wcs(path).has_celestial
    assert exp.metadata["EXPTIME"] == 60.0


@needs_data
def test_exposure_from_fits_nircam_noise_map():
    base = "jw01324001001-01324-o001_t001_nircam_clear-f200w_i2d_stamp"
    path = DATA / "sfft_nircam_a2744" / f"{base}.fits"
    noise_path = DATA / "sfft_nircam_a2744" / f"{base}.noise.fits"
    exp = exposureFromFits(path, noise=noise_path)
    raw = readImageArray(path)
    sigma = readImageArray(noise_path)
    assert exp.shape == (900, 900) and exp.dtype == np.float32
    nodata = exp.mask.isSet("NO_DATA")
    assert nodata.sum() == 5  # README: the reference has 5 NaN pixels
    np.testing.assert_array_equal(nodata, np.isnan(raw))
    assert np.all(np.isfinite(exp.image.array)) and np.all(np.isfinite(exp.variance.array))
    good = ~nodata
    expected = (sigma.astype(np.float64) ** 2).astype(np.float32)
    np.testing.assert_array_equal(exp.variance.array[good], expected[good])
    assert exp.wcs is not None and header_wcs(path).has_celestial
    assert exp.metadata["FILTER"] == "F200W"
