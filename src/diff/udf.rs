//! Scalar functions of one column that map an array to an array, such as the normal
//! form of float keys or decimals rounded once to f64: a name, the argument's
//! signature, the result type and the mapping, registered as one DataFusion function.

use std::hash::{Hash, Hasher};

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The arguments of a call as arrays of the batch's row count. (DataFusion passes a
/// column that is constant in a batch as a single value; `values_to_arrays` would make
/// it one row long when every argument is one.)
pub fn arg_arrays(args: &ScalarFunctionArgs) -> DfResult<Vec<ArrayRef>> {
    args.args
        .iter()
        .map(|a| a.to_array(args.number_rows))
        .collect()
}

/// A function of one column, `map`ping its array to the result.
#[derive(Debug)]
pub struct ArrayFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    map: fn(&ArrayRef) -> DfResult<ArrayRef>,
}

impl PartialEq for ArrayFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.signature == other.signature
    }
}
impl Eq for ArrayFunction {}
impl Hash for ArrayFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ArrayFunction {
    pub fn udf(
        name: &'static str,
        signature: Signature,
        returns: DataType,
        map: fn(&ArrayRef) -> DfResult<ArrayRef>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(ArrayFunction {
            name,
            signature,
            returns,
            map,
        })
    }
}

impl ScalarUDFImpl for ArrayFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.returns.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = arg_arrays(&args)?;
        Ok(ColumnarValue::Array((self.map)(&arrays[0])?))
    }
}
